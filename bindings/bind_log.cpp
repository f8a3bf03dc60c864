// The core's diagnostics (imagerelay/log.hpp) into Python's `logging`, logger "imagerelay".
// The sink takes the GIL on whatever thread logs; it is removed at exit (imagerelay/_log.py)
// before the interpreter goes, and a message after that goes to stderr.
#include "bindings.hpp"
#include "imagerelay/log.hpp"

namespace py = pybind11;

namespace imagerelay::bindings {
namespace {

int PythonLevel(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return 10;
    case LogLevel::kInfo: return 20;
    case LogLevel::kWarning: return 30;
    case LogLevel::kError: return 40;
  }
  return 40;
}

}  // namespace

void BindLog(py::module_& m) {
  m.def(
      "_log_to_python",
      [](bool on) {
        if (!on) {
          SetLogSink(nullptr);
          return;
        }
        SetLogSink([](LogLevel level, const std::string& message) {
          py::gil_scoped_acquire gil;
          try {
            py::module_::import("logging")
                .attr("getLogger")("imagerelay")
                .attr("log")(PythonLevel(level), message);
          } catch (py::error_already_set& e) {
            e.discard_as_unraisable("imagerelay's log sink");
          }
        });
      },
      py::arg("on"), "Sends the core's diagnostics to logging (on) or to stderr (off).");
}

}  // namespace imagerelay::bindings
