// Python bindings: numpy arrays in and out without copies, the GIL released for the long work.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "coreset.hpp"
#include "em.hpp"
#include "production.hpp"
#include "simulate.hpp"

namespace py = pybind11;
using namespace fabguard;

namespace {

constexpr int kMaxThreads = 1024;

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

template <typename T>
void require_length(const Array<T>& a, int64_t n, const char* name) {
    if (a.ndim() != 1 || a.shape(0) != n)
        throw std::invalid_argument(std::string(name) + " must be a 1-d array of length " +
                                    std::to_string(n));
}

// The validated production table. Holds references to the caller's arrays: no copies.
class PyProduction {
public:
    PyProduction(Array<int64_t> batch_ptr, Array<int32_t> machine, Array<int64_t> pieces_in,
                 Array<int64_t> defects, Array<uint8_t> inspects, int64_t n_machines)
        : batch_ptr_(std::move(batch_ptr)), machine_(std::move(machine)),
          pieces_in_(std::move(pieces_in)), defects_(std::move(defects)),
          inspects_(std::move(inspects)) {
        if (batch_ptr_.ndim() != 1 || batch_ptr_.shape(0) < 2)
            throw std::invalid_argument("batch_ptr must be a 1-d array of at least 2 offsets");
        const int64_t n_rows = machine_.ndim() == 1 ? machine_.shape(0) : -1;
        require_length(machine_, n_rows, "machine");
        require_length(pieces_in_, n_rows, "pieces_in");
        require_length(defects_, n_rows, "defects");
        require_length(inspects_, n_rows, "inspects");
        view_.n_batches = batch_ptr_.shape(0) - 1;
        view_.n_rows = n_rows;
        view_.n_machines = n_machines;
        view_.batch_ptr = batch_ptr_.data();
        view_.machine = machine_.data();
        view_.pieces_in = pieces_in_.data();
        view_.defects = defects_.data();
        view_.inspects = inspects_.data();
        validate(view_);
    }
    const Production& view() const { return view_; }

private:
    Array<int64_t> batch_ptr_;
    Array<int32_t> machine_;
    Array<int64_t> pieces_in_;
    Array<int64_t> defects_;
    Array<uint8_t> inspects_;
    Production view_;
};

// A numpy array that owns a moved-in vector.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, heap->data(), owner);
}

// Progress and Ctrl-C while the GIL is released: poll() takes the GIL briefly, calls the Python
// callback and checks for signals; a Python error stops the work and is re-raised afterwards.
struct Poller {
    py::object callback;
    std::unique_ptr<py::error_already_set> error;

    bool operator()(int64_t done) {
        py::gil_scoped_acquire gil;
        if (error) return false;
        try {
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            if (!callback.is_none()) callback(done);
        } catch (py::error_already_set& e) {
            error = std::make_unique<py::error_already_set>(std::move(e));
            return false;
        }
        return true;
    }
    void rethrow() {
        if (error) throw *error;
    }
};

py::dict fit_em_py(const PyProduction& prod, Array<int64_t> subset_ptr, Array<int64_t> subset_idx,
                   Array<double> p0, Array<double> a0, double tol, int max_iter, bool accelerate,
                   const std::string& stop, bool escapes, int threads, py::object progress) {
    const Production& pr = prod.view();
    // Again: the arrays are shared with Python and may have been written to since construction.
    validate(pr);
    if (subset_ptr.ndim() != 1 || subset_ptr.shape(0) < 2)
        throw std::invalid_argument("subset_ptr must be a 1-d array of at least 2 offsets");
    if (subset_idx.ndim() != 1) throw std::invalid_argument("subset_idx must be 1-d");
    const int64_t R = subset_ptr.shape(0) - 1;
    if (subset_ptr.at(R) != subset_idx.shape(0))
        throw std::invalid_argument("subset_ptr[-1] must equal len(subset_idx)");
    require_length(p0, pr.n_machines, "p0");
    require_length(a0, pr.n_machines, "a0");
    for (int64_t m = 0; m < pr.n_machines; ++m) {
        if (!(p0.at(m) >= 0.0 && p0.at(m) <= 1.0)) throw std::invalid_argument("p0 must lie in [0, 1]");
        if (!(a0.at(m) >= 0.0 && a0.at(m) <= 1.0)) throw std::invalid_argument("a0 must lie in [0, 1]");
    }
    if (!(tol >= 0.0)) throw std::invalid_argument("tol must be >= 0");
    if (max_iter < 1) throw std::invalid_argument("max_iter must be >= 1");
    if (stop != "loglik" && stop != "l2") throw std::invalid_argument("stop must be 'loglik' or 'l2'");
    if (threads < 1 || threads > kMaxThreads)
        throw std::invalid_argument("threads must be in [1, " + std::to_string(kMaxThreads) + "]");
    Subsets subsets{R, subset_ptr.data(), subset_idx.data()};
    validate(subsets, pr.n_batches);

    const int64_t M = pr.n_machines;
    py::array_t<double> yield({R, M}), miss({R, M}), expected({R, M});
    py::array_t<int32_t> n_iter(R);
    py::array_t<uint8_t> converged(R);
    py::array_t<double> loglik(R);
    EmOutput out{yield.mutable_data(), miss.mutable_data(), expected.mutable_data(),
                 n_iter.mutable_data(), converged.mutable_data(), loglik.mutable_data()};
    EmConfig config{tol, max_iter, accelerate, stop == "l2" ? EmStop::kL2 : EmStop::kLogLik, escapes};
    Poller poller{std::move(progress), nullptr};
    {
        py::gil_scoped_release release;
        fit_em(pr, subsets, p0.data(), a0.data(), config, threads, out,
               [&poller](int64_t done) { return poller(done); });
    }
    poller.rethrow();
    py::dict result;
    result["yield"] = yield;
    result["miss_rate"] = miss;
    result["expected_defects"] = expected;
    result["n_iter"] = n_iter;
    result["converged"] = converged.attr("astype")("bool");
    result["loglik"] = loglik;
    return result;
}

py::dict score_outer_product_py(const PyProduction& prod, Array<double> p, Array<double> a,
                                Array<int64_t> free_index) {
    const Production& pr = prod.view();
    validate(pr);
    require_length(p, pr.n_machines, "p");
    require_length(a, pr.n_machines, "a");
    require_length(free_index, 2 * pr.n_machines, "free_index");
    int64_t n_free = 0;
    for (int64_t j = 0; j < 2 * pr.n_machines; ++j) {
        const int64_t f = free_index.at(j);
        if (f < -1) throw std::invalid_argument("free_index must be -1 or a place 0, 1, 2, ... in order");
        if (f >= 0) {
            if (f != n_free) throw std::invalid_argument("free_index must number the kept parameters 0, 1, 2, ... in order");
            ++n_free;
        }
    }
    for (int64_t m = 0; m < pr.n_machines; ++m) {
        if (!(p.at(m) > 0.0 && p.at(m) <= 1.0)) throw std::invalid_argument("p must lie in (0, 1]");
        if (!(a.at(m) > 0.0 && a.at(m) <= 1.0)) throw std::invalid_argument("a must lie in (0, 1]");
    }
    py::array_t<double> grad(n_free), opg({n_free, n_free});
    double loglik;
    {
        py::gil_scoped_release release;
        loglik = score_outer_product(pr, p.data(), a.data(), free_index.data(), n_free, grad.mutable_data(),
                                     opg.mutable_data());
    }
    py::dict out;
    out["grad"] = grad;
    out["opg"] = opg;
    out["loglik"] = loglik;
    return out;
}

py::object inverse_diagonal_py(Array<double> a, int threads) {
    if (a.ndim() != 2 || a.shape(0) != a.shape(1)) throw std::invalid_argument("a must be a square matrix");
    if (threads < 1 || threads > kMaxThreads)
        throw std::invalid_argument("threads must be in [1, " + std::to_string(kMaxThreads) + "]");
    const int64_t n = a.shape(0);
    py::array_t<double> out(n);
    bool ok;
    {
        py::gil_scoped_release release;
        ok = inverse_diagonal(a.data(), n, threads, out.mutable_data());
    }
    if (!ok) return py::none();
    return std::move(out);
}

py::array_t<int64_t> draw_resamples_py(int64_t n_batches, double fraction, int64_t n_resamples,
                                       uint64_t seed) {
    std::vector<int64_t> flat;
    {
        py::gil_scoped_release release;
        flat = draw_resamples(n_batches, fraction, n_resamples, seed);
    }
    const int64_t k = static_cast<int64_t>(flat.size()) / n_resamples;
    return to_numpy(std::move(flat)).reshape({n_resamples, k});
}

py::array_t<int64_t> draw_bootstrap_py(int64_t n_batches, int64_t n_resamples, uint64_t seed) {
    std::vector<int64_t> flat;
    {
        py::gil_scoped_release release;
        flat = draw_bootstrap(n_batches, n_resamples, seed);
    }
    return to_numpy(std::move(flat)).reshape({n_resamples, n_batches});
}

py::dict simulate_py(const SimConfig& config) {
    SimResult r;
    {
        py::gil_scoped_release release;
        r = simulate(config);
    }
    py::dict out;
    out["batch_ptr"] = to_numpy(std::move(r.batch_ptr));
    out["machine"] = to_numpy(std::move(r.machine));
    out["pieces_in"] = to_numpy(std::move(r.pieces_in));
    out["defects"] = to_numpy(std::move(r.defects));
    out["inspects"] = to_numpy(std::move(r.inspects));
    out["yield"] = to_numpy(std::move(r.yield));
    out["miss_rate"] = to_numpy(std::move(r.miss_rate));
    out["has_inspection"] = to_numpy(std::move(r.has_inspection));
    out["low"] = to_numpy(std::move(r.low));
    out["defects_made"] = to_numpy(std::move(r.defects_made));
    return out;
}

// Greedy k-centre coreset of float32 features (n, d), read in place: dtype and layout are refused,
// not converted, so a caller never pays a hidden copy of a large feature matrix.
py::array_t<int64_t> kcenter_greedy_py(py::array features, int64_t k, int64_t start, int threads,
                                       py::object progress) {
    if (!features.dtype().is(py::dtype::of<float>()))
        throw std::invalid_argument("features must be float32, got " + std::string(py::str(features.dtype())));
    if (features.ndim() != 2)
        throw std::invalid_argument("features must be 2-d (points, dimensions), got " +
                                    std::to_string(features.ndim()) + "-d");
    if (!(features.flags() & py::array::c_style)) throw std::invalid_argument("features must be C-contiguous");
    if (threads < 1 || threads > kMaxThreads)
        throw std::invalid_argument("threads must be in [1, " + std::to_string(kMaxThreads) + "]");
    const auto* x = static_cast<const float*>(features.data());
    const int64_t n = features.shape(0), d = features.shape(1);
    Poller poller{std::move(progress), nullptr};
    std::vector<int64_t> chosen;
    {
        py::gil_scoped_release release;
        chosen = kcenter_greedy(x, n, d, k, start, threads, [&poller](int64_t done) { return poller(done); });
    }
    poller.rethrow();
    return to_numpy(std::move(chosen));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "fabguard's compiled core: machine-yield EM and the production simulator.";

    py::class_<PyProduction>(m, "Production",
                             "Validated production table (rows grouped by batch, in step order).")
        .def(py::init<Array<int64_t>, Array<int32_t>, Array<int64_t>, Array<int64_t>,
                      Array<uint8_t>, int64_t>(),
             py::arg("batch_ptr"), py::arg("machine"), py::arg("pieces_in"), py::arg("defects"),
             py::arg("inspects"), py::arg("n_machines"))
        .def_property_readonly("n_batches", [](const PyProduction& p) { return p.view().n_batches; })
        .def_property_readonly("n_rows", [](const PyProduction& p) { return p.view().n_rows; })
        .def_property_readonly("n_machines",
                               [](const PyProduction& p) { return p.view().n_machines; });

    m.def("fit_em", &fit_em_py, py::arg("production"), py::arg("subset_ptr"),
          py::arg("subset_idx"), py::arg("p0"), py::arg("a0"), py::arg("tol") = 1e-13,
          py::arg("max_iter") = 1000, py::arg("accelerate") = true, py::arg("stop") = "loglik", py::arg("escapes") = true,
          py::arg("threads") = 1, py::arg("progress") = py::none(),
          "Fit the EM on every batch subset (a subset may repeat a batch) from the same start "
          "(p0, a0); returns (subsets, machines) arrays. stop 'loglik': relative change of the "
          "log-likelihood <= tol, SQUAREM if accelerate; 'l2': the authors' plain EM, L2 change of "
          "the yields <= tol. escapes: model defects that escape every inspection (the paper's model "
          "counts them as good). progress(done) is called as subsets finish.");

    m.def("score_outer_product", &score_outer_product_py, py::arg("production"), py::arg("p"), py::arg("a"),
          py::arg("free_index"),
          "Escapes model at (p, a), all batches: per-batch scores by Fisher's identity; returns grad "
          "(their sum), opg (the sum of their outer products) over the parameters kept by free_index "
          "(2 x machines: yields then miss rates; -1 = left out, else 0, 1, 2, ... in order) and the "
          "log-likelihood.");

    m.def("inverse_diagonal", &inverse_diagonal_py, py::arg("a"), py::arg("threads") = 1,
          "diag(a^-1) of a symmetric positive definite matrix by Cholesky (scaled to unit diagonal), "
          "the same for any thread count; None where a is not positive definite to working precision.");

    m.def("draw_bootstrap", &draw_bootstrap_py, py::arg("n_batches"), py::arg("n_resamples"),
          py::arg("seed"),
          "(n_resamples, n_batches) sorted batch indices drawn with replacement; row r depends "
          "only on (seed, r).");

    m.def("draw_resamples", &draw_resamples_py, py::arg("n_batches"), py::arg("fraction"),
          py::arg("n_resamples"), py::arg("seed"),
          "(n_resamples, k) sorted batch indices, k = round(fraction * n_batches); row r "
          "depends only on (seed, r).");

    py::class_<SimConfig>(m, "SimConfig")
        .def(py::init<>())
        .def_readwrite("n_machines", &SimConfig::n_machines)
        .def_readwrite("n_batches", &SimConfig::n_batches)
        .def_readwrite("n_low", &SimConfig::n_low)
        .def_readwrite("low_yield", &SimConfig::low_yield)
        .def_readwrite("healthy_min", &SimConfig::healthy_min)
        .def_readwrite("healthy_max", &SimConfig::healthy_max)
        .def_readwrite("inspect_share", &SimConfig::inspect_share)
        .def_readwrite("pieces_mean", &SimConfig::pieces_mean)
        .def_readwrite("pieces_sd", &SimConfig::pieces_sd)
        .def_readwrite("pieces_min", &SimConfig::pieces_min)
        .def_readwrite("pieces_max", &SimConfig::pieces_max)
        .def_readwrite("steps_mean", &SimConfig::steps_mean)
        .def_readwrite("steps_sd", &SimConfig::steps_sd)
        .def_readwrite("steps_min", &SimConfig::steps_min)
        .def_readwrite("steps_max", &SimConfig::steps_max)
        .def_readwrite("inspect_steps_frac", &SimConfig::inspect_steps_frac)
        .def_readwrite("inspect_steps_sd", &SimConfig::inspect_steps_sd)
        .def_readwrite("accuracy_mean", &SimConfig::accuracy_mean)
        .def_readwrite("accuracy_sd", &SimConfig::accuracy_sd)
        .def_readwrite("accuracy_min", &SimConfig::accuracy_min)
        .def_readwrite("accuracy_max", &SimConfig::accuracy_max)
        .def_readwrite("seed", &SimConfig::seed);

    m.def("simulate", &simulate_py, py::arg("config"),
          "Simulate production data and its truth (see SimConfig); returns a dict of arrays.");

    m.def("kcenter_greedy", &kcenter_greedy_py, py::arg("features"), py::arg("k"), py::arg("start"),
          py::arg("threads") = 1, py::arg("progress") = py::none(),
          "Indices (k,) of a greedy k-centre coreset of float32 features (n, d): start, then each time the "
          "point farthest (squared Euclidean, float32, fixed summation order) from those chosen, the "
          "smallest index on a tie; the same for any thread count. progress(steps_done) is called "
          "about every 200 ms.");
}
