// The Engine: every call that can block releases the GIL; Python callbacks are held so that
// copying them never needs the GIL and releasing them takes it.
#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>

#include "bindings.hpp"
#include "imagerelay/engine.hpp"

namespace py = pybind11;

namespace imagerelay::bindings {
namespace {

using Release = py::call_guard<py::gil_scoped_release>;

// Runs `work(token)` on a thread of its own while the calling Python thread waits with the
// GIL released, looking for signals every 100 ms. Why: a long call (an import, an export,
// a verification) would otherwise hold Ctrl-C, or a notebook's interrupt, until it ended.
// On a signal whose handler raises (KeyboardInterrupt), the token fires, the work stops
// and cleans up (an import ends CreateFailed), and the exception propagates. `tick`, if
// given, runs on the calling thread with the GIL held at each look and once at the end.
// `cancel`, if given, also stops the work: from another thread (an asyncio task cancelled).
template <typename Work>
auto RunInterruptible(Work&& work, const std::function<void()>& tick = {},
                      const CancelToken* cancel = nullptr) {
  using Result = std::invoke_result_t<Work&, const CancelToken*>;
  CancelToken token(cancel);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::conditional_t<std::is_void_v<Result>, bool, std::optional<Result>> result{};
  std::exception_ptr error;
  std::thread worker([&] {
    try {
      if constexpr (std::is_void_v<Result>) {
        work(&token);
      } else {
        result.emplace(work(&token));
      }
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mu);
    done = true;
    cv.notify_all();
  });
  bool interrupted = false;
  std::exception_ptr tick_error;
  for (;;) {
    {
      py::gil_scoped_release release;
      std::unique_lock lock(mu);
      if (cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return done; })) break;
    }
    if (PyErr_CheckSignals() != 0) {  // only the main thread sees signals; others just wait
      interrupted = true;
      token.Cancel();
      break;
    }
    if (tick) {
      try {
        tick();
      } catch (...) {  // raised: stop the work as for a signal, then raise it
        tick_error = std::current_exception();
        token.Cancel();
        break;
      }
    }
  }
  {
    py::gil_scoped_release release;
    worker.join();
  }
  if (interrupted) throw py::error_already_set();
  if (tick_error) std::rethrow_exception(tick_error);
  if (tick && !error) tick();
  if (error) std::rethrow_exception(error);
  if constexpr (!std::is_void_v<Result>) return std::move(*result);
}

// A Python callable owned from C++: destroyed with the GIL held while Python lives.
class PyCallable {
 public:
  explicit PyCallable(py::function fn) : fn_(std::move(fn)) {}
  ~PyCallable() {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      fn_ = py::object();
    } else {
      fn_.release();  // the interpreter is gone: nothing left to decref
    }
  }
  PyCallable(const PyCallable&) = delete;
  PyCallable& operator=(const PyCallable&) = delete;
  const py::object& fn() const { return fn_; }

 private:
  py::object fn_;
};

EventFn WrapListener(py::function fn) {
  auto callable = std::make_shared<PyCallable>(std::move(fn));
  return [callable](const Event& event) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      callable->fn()(event);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("imagerelay event callback");
    }
  };
}

// Carries a long call's progress to a Python callable: the call's thread leaves its latest
// progress here, and the caller's thread (holding the GIL) hands it to
// `progress(bytes_done, bytes_total)` at each look of RunInterruptible.
class ProgressRelay {
 public:
  explicit ProgressRelay(std::optional<py::function> progress) : progress_(std::move(progress)) {}

  // For the engine: empty when nobody listens, so that the call does not report at all.
  ProgressFn sink() {
    if (!progress_) return {};
    return [this](const IoProgress& p) {
      std::lock_guard lock(mu_);
      latest_ = p;
    };
  }

  // For RunInterruptible: empty when nobody listens.
  std::function<void()> tick() {
    if (!progress_) return {};
    return [this] {
      std::optional<IoProgress> p;
      {
        std::lock_guard lock(mu_);
        p.swap(latest_);
      }
      if (p) (*progress_)(p->bytes_done, p->bytes_total);
    };
  }

 private:
  std::optional<py::function> progress_;
  std::mutex mu_;
  std::optional<IoProgress> latest_;
};

// `tick` of RunInterruptible from an optional Python callable.
std::function<void()> Tick(const std::optional<py::function>& fn) {
  if (!fn) return {};
  return [fn] { (*fn)(); };
}

// Image statuses named as Python shows them.
std::vector<ImageStatus> ParseImageStatuses(const std::vector<std::string>& names) {
  std::vector<ImageStatus> out;
  for (const auto& name : names) {
    auto status = ParseImageStatus(name);
    if (!status) ThrowCode(codes::kInvalidParameter, "no image status " + name);
    out.push_back(*status);
  }
  return out;
}

PolicyFn WrapPolicy(py::function fn) {
  auto callable = std::make_shared<PyCallable>(std::move(fn));
  return [callable](const PolicyRequest& request) -> std::optional<std::string> {
    py::gil_scoped_acquire gil;
    try {
      py::object result = callable->fn()(request);
      if (result.is_none()) return std::nullopt;
      return py::str(result).cast<std::string>();
    } catch (py::error_already_set& e) {
      return std::string("a policy raised ") + e.what();
    }
  };
}

}  // namespace

void BindEngine(py::module_& m) {
  // Ends a wait from another thread (RunInterruptible's `cancel`).
  py::class_<CancelToken>(m, "CancelToken")
      .def(py::init<>())
      .def("cancel", &CancelToken::Cancel)
      .def_property_readonly("cancelled", &CancelToken::cancelled);

  py::class_<ImportRequest>(m, "ImportRequest")
      .def(py::init<>())
      .def_readwrite("source", &ImportRequest::source)
      .def_readwrite("region", &ImportRequest::region)
      .def_readwrite("name", &ImportRequest::name)
      .def_readwrite("os_type", &ImportRequest::os_type)
      .def_readwrite("os_name", &ImportRequest::os_name)
      .def_readwrite("os_version", &ImportRequest::os_version)
      .def_readwrite("os_arch", &ImportRequest::os_arch)
      .def_readwrite("format", &ImportRequest::format)
      .def_readwrite("description", &ImportRequest::description)
      .def_readwrite("validate_only", &ImportRequest::validate_only);

  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine")
      .def_static(
          "open",
          [](const std::filesystem::path& home, const Limits& limits, int workers,
             bool start_workers, const std::string& catalog,
             const std::vector<std::string>& worker_regions, int64_t lease_ms) {
            EngineOptions options;
            options.home = home;
            options.limits = limits;
            options.workers = workers;
            options.start_workers = start_workers;
            options.catalog = catalog;
            options.worker_regions = worker_regions;
            if (lease_ms > 0) options.lease_ms = lease_ms;
            return Engine::Open(options);
          },
          py::arg("home"), py::arg("limits"), py::arg("workers") = 4,
          py::arg("start_workers") = true, py::arg("catalog") = "",
          py::arg("worker_regions") = std::vector<std::string>{}, py::arg("lease_ms") = 0,
          Release())
      .def("close", &Engine::Close, Release())
      .def_property_readonly("home", &Engine::home)
      .def_property_readonly("catalog", &Engine::catalog)
      .def_property_readonly("limits", &Engine::limits)
      .def("add_region", &Engine::AddRegion, py::arg("id"), py::arg("store"), py::arg("name"),
           py::arg("access_key_id") = "", py::arg("secret_access_key") = "",
           py::arg("session_token") = "", Release())
      .def("regions", &Engine::Regions, Release())
      .def("region", &Engine::GetRegion, py::arg("id"), Release())
      .def("remove_region", &Engine::RemoveRegion, py::arg("account"), py::arg("id"),
           py::arg("validate_only") = false, Release())
      .def("move_region", &Engine::MoveRegion, py::arg("account"), py::arg("id"),
           py::arg("store_uri"), py::arg("validate_only") = false, Release())
      .def("add_account", &Engine::AddAccount, py::arg("id"), py::arg("name"), Release())
      .def("remove_account", &Engine::RemoveAccount, py::arg("account"), py::arg("id"),
           py::arg("validate_only") = false, Release())
      .def("accounts", &Engine::Accounts, Release())
      .def("account", &Engine::GetAccount, py::arg("id"), Release())
      .def(
          "import_image",
          [](Engine& self, const std::string& account, const ImportRequest& request, bool wait,
             bool system, std::optional<py::function> progress) {
            ProgressRelay relay(progress);
            return RunInterruptible(
                [&](const CancelToken* cancel) {
                  return self.ImportImage(account, request, wait, system, cancel, relay.sink());
                },
                relay.tick());
          },
          py::arg("account"), py::arg("request"), py::arg("wait"), py::arg("system"),
          py::arg("progress") = py::none())
      .def("images", &Engine::Images, py::arg("account"), py::arg("region"), py::arg("image_type"),
           py::arg("name"), Release())
      .def("image", &Engine::GetImage, py::arg("account"), py::arg("image_id"), Release())
      .def("share", &Engine::Share, py::arg("account"), py::arg("image_id"), py::arg("accounts"),
           py::arg("validate_only") = false, Release())
      .def("unshare", &Engine::Unshare, py::arg("account"), py::arg("image_id"),
           py::arg("accounts"), py::arg("validate_only") = false, Release())
      .def("shared_users", &Engine::SharedUsers, py::arg("account"), py::arg("image_id"), Release())
      .def("rename", &Engine::Rename, py::arg("account"), py::arg("image_id"), py::arg("name"),
           py::arg("validate_only") = false, Release())
      .def("delete", &Engine::Delete, py::arg("account"), py::arg("image_id"),
           py::arg("validate_only") = false, Release())
      .def(
          "export",
          [](Engine& self, const std::string& account, const std::string& image_id,
             const std::filesystem::path& path, std::optional<py::function> progress, bool force) {
            ProgressRelay relay(progress);
            RunInterruptible(
                [&](const CancelToken* cancel) {
                  self.Export(account, image_id, path, cancel, relay.sink(), force);
                },
                relay.tick());
          },
          py::arg("account"), py::arg("image_id"), py::arg("path"),
          py::arg("progress") = py::none(), py::arg("force") = false)
      .def(
          "verify",
          [](Engine& self, const std::string& account, const std::string& image_id,
             std::optional<py::function> progress) {
            ProgressRelay relay(progress);
            return RunInterruptible(
                [&](const CancelToken* cancel) {
                  return self.Verify(account, image_id, cancel, relay.sink());
                },
                relay.tick());
          },
          py::arg("account"), py::arg("image_id"), py::arg("progress") = py::none())
      .def(
          "scrub",
          [](Engine& self, const std::string& account, std::optional<std::string> region,
             std::optional<py::function> progress) {
            ProgressRelay relay(progress);
            return RunInterruptible(
                [&](const CancelToken* cancel) {
                  return self.Scrub(account, region, cancel, relay.sink());
                },
                relay.tick());
          },
          py::arg("account"), py::arg("region"), py::arg("progress") = py::none())
      // The waits run interruptibly: Ctrl-C ends them at once, whatever their timeout.
      .def(
          "wait_digest",
          [](Engine& self, const std::string& account, const std::string& image_id,
             std::optional<double> timeout, std::optional<py::function> progress) {
            ProgressRelay relay(progress);
            return RunInterruptible(
                [&](const CancelToken* cancel) {
                  return self.WaitDigest(account, image_id, timeout, cancel, relay.sink());
                },
                relay.tick());
          },
          py::arg("account"), py::arg("image_id"), py::arg("timeout"),
          py::arg("progress") = py::none())
      .def(
          "wait_image",
          [](Engine& self, const std::string& account, const std::string& image_id,
             const std::vector<std::string>& busy, std::optional<double> timeout) {
            const std::vector<ImageStatus> statuses = ParseImageStatuses(busy);
            return RunInterruptible([&](const CancelToken* cancel) {
              return self.WaitImage(account, image_id, statuses, timeout, cancel);
            });
          },
          py::arg("account"), py::arg("image_id"), py::arg("busy"), py::arg("timeout"))
      .def("replicate", &Engine::Replicate, py::arg("account"), py::arg("image_id"), py::arg("to"),
           py::arg("name"), py::arg("client_token"), py::arg("validate_only") = false, Release())
      .def("cancel_copy", &Engine::CancelCopy, py::arg("account"), py::arg("dest_image_id"),
           Release())
      .def("cancel_job", &Engine::CancelJob, py::arg("account"), py::arg("job_id"),
           py::arg("region"), Release())
      .def("job", &Engine::GetJob, py::arg("account"), py::arg("job_id"), Release())
      .def("jobs", &Engine::Jobs, py::arg("account"), py::arg("active"), Release())
      .def(
          "wait_job",
          [](Engine& self, const std::string& account, const std::string& job_id,
             std::optional<double> timeout, std::optional<py::function> tick,
             const CancelToken* cancel) {
            return RunInterruptible(
                [&](const CancelToken* stop) {
                  return self.WaitJob(account, job_id, timeout, stop);
                },
                Tick(tick), cancel);
          },
          py::arg("account"), py::arg("job_id"), py::arg("timeout"), py::arg("tick") = py::none(),
          py::arg("cancel") = py::none())
      .def(
          "wait_idle",
          [](Engine& self, std::optional<double> timeout) {
            return RunInterruptible(
                [&](const CancelToken* cancel) { return self.WaitIdle(timeout, cancel); });
          },
          py::arg("timeout"))
      .def("run_until_idle", &Engine::RunUntilIdle, Release())
      .def("copies_waiting_for_a_worker", &Engine::CopiesWaitingForAWorker, Release())
      .def("events", &Engine::Events, py::arg("account"), py::arg("since"), py::arg("image_id"),
           py::arg("since_time_us") = 0, Release())
      .def(
          "wait_events",
          [](Engine& self, const std::string& account, int64_t since,
             std::optional<std::string> image_id, std::optional<double> timeout) {
            return RunInterruptible([&](const CancelToken* cancel) {
              return self.WaitEvents(account, since, image_id, timeout, cancel);
            });
          },
          py::arg("account"), py::arg("since"), py::arg("image_id"), py::arg("timeout"))
      .def(
          "add_listener",
          [](Engine& engine, const std::string& account, const std::string& type, py::function fn) {
            auto wrapped = WrapListener(std::move(fn));
            py::gil_scoped_release release;
            return engine.AddListener(account, type, std::move(wrapped));
          },
          py::arg("account"), py::arg("event_type"), py::arg("callback"))
      .def("remove_listener", &Engine::RemoveListener, py::arg("handle"), Release())
      .def(
          "add_policy",
          [](Engine& engine, py::function fn) {
            auto wrapped = WrapPolicy(std::move(fn));
            py::gil_scoped_release release;
            return engine.AddPolicy(std::move(wrapped));
          },
          py::arg("policy"))
      .def("remove_policy", &Engine::RemovePolicy, py::arg("handle"), Release());
}

}  // namespace imagerelay::bindings
