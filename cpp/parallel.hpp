// Independent tasks on std::threads, with the calling thread left free to report progress.
//
// Task t writes only to its own outputs, so which thread runs it changes nothing in the result.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fabguard {

// Runs task(t, worker) for t in [0, n_tasks) on `threads` workers. While they run, the calling
// thread calls poll(tasks_done) about every poll_ms and when a task ends; poll returning false
// cancels the tasks not yet started. The first exception thrown by a task is rethrown here.
// Returns false if cancelled.
inline bool run_tasks(int64_t n_tasks, int threads,
                      const std::function<void(int64_t task, int worker)>& task,
                      const std::function<bool(int64_t done)>& poll, int poll_ms = 200) {
    if (n_tasks <= 0) return true;
    const int n_workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n_tasks)));
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::atomic<bool> cancel{false};
    std::exception_ptr error;
    std::mutex mutex;
    std::condition_variable cv;

    auto worker = [&](int w) {
        for (;;) {
            if (cancel.load()) return;
            const int64_t t = next.fetch_add(1);
            if (t >= n_tasks) return;
            try {
                task(t, w);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                if (!error) error = std::current_exception();
                cancel.store(true);
            }
            {
                std::lock_guard<std::mutex> lock(mutex);
                done.fetch_add(1);
            }
            cv.notify_one();
        }
    };

    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(n_workers));
    try {
        for (int w = 0; w < n_workers; ++w) pool.emplace_back(worker, w);
    } catch (...) {  // no thread left joinable: that would terminate the interpreter
        cancel.store(true);
        for (auto& th : pool) th.join();
        throw;
    }

    {
        std::unique_lock<std::mutex> lock(mutex);
        while (done.load() < n_tasks && !cancel.load()) {
            cv.wait_for(lock, std::chrono::milliseconds(poll_ms));
            if (!poll) continue;
            const int64_t now = done.load();
            lock.unlock();
            const bool go_on = poll(now);
            lock.lock();
            if (!go_on) cancel.store(true);
        }
    }
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
    if (poll && done.load() == n_tasks) poll(n_tasks);
    return done.load() == n_tasks;
}

}  // namespace fabguard
