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

namespace fabguard {

// A fixed team of threads for many short parallel loops of one owner (an EM fit's E-steps): the
// threads are started once and wait between loops. The caller works as worker 0. Items must not
// throw. Whatever the team's size, every item runs exactly once, so a loop whose items write to
// their own outputs gives the same result for any size. A loop ends when its items are done: a
// helper that has not woken by then (its core busy elsewhere) is not waited for, and does not join
// that loop later.
class Team {
public:
    explicit Team(int n_threads) {
        for (int w = 1; w < n_threads; ++w) {
            try {
                helpers_.emplace_back([this, w] { loop(w); });
            } catch (...) {  // fewer threads: the same results, later
                break;
            }
        }
    }
    ~Team() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        start_.notify_all();
        for (auto& th : helpers_) th.join();
    }
    Team(const Team&) = delete;
    Team& operator=(const Team&) = delete;

    int size() const { return static_cast<int>(helpers_.size()) + 1; }

    // Runs fn(item, worker) for item in [0, n_items) and returns when all have run.
    void run(int64_t n_items, const std::function<void(int64_t, int)>& fn) {
        if (helpers_.empty() || n_items <= 1) {
            for (int64_t i = 0; i < n_items; ++i) fn(i, 0);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            fn_ = &fn;
            n_items_ = n_items;
            next_.store(0);
            finished_.store(0);
            open_ = true;
            ++generation_;
        }
        start_.notify_all();
        work(0);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return finished_.load() == n_items_ && active_ == 0; });
        open_ = false;  // under the lock with the check above: no helper joins a finished loop
        fn_ = nullptr;
    }

private:
    void work(int worker) {
        for (int64_t i = next_.fetch_add(1); i < n_items_; i = next_.fetch_add(1)) {
            (*fn_)(i, worker);
            if (finished_.fetch_add(1) + 1 == n_items_) {
                std::lock_guard<std::mutex> lock(mutex_);
                done_.notify_one();
            }
        }
    }
    void loop(int worker) {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                start_.wait(lock, [&] { return stop_ || (open_ && generation_ != seen); });
                if (stop_) return;
                seen = generation_;
                ++active_;
            }
            work(worker);
            std::lock_guard<std::mutex> lock(mutex_);
            if (--active_ == 0) done_.notify_one();
        }
    }

    std::vector<std::thread> helpers_;
    std::mutex mutex_;
    std::condition_variable start_, done_;
    const std::function<void(int64_t, int)>* fn_ = nullptr;
    int64_t n_items_ = 0;
    std::atomic<int64_t> next_{0};
    std::atomic<int64_t> finished_{0};
    int active_ = 0;  // helpers inside work() of the open loop
    bool open_ = false;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

}  // namespace fabguard
