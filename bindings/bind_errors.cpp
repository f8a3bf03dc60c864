// Translates imagerelay::Error into the Python classes of imagerelay.errors, carrying
// code, message, HTTP status and every problem.
#include <pybind11/gil_safe_call_once.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "imagerelay/error.hpp"

namespace py = pybind11;

namespace imagerelay::bindings {
namespace {

py::object ErrorsModule() {
  PYBIND11_CONSTINIT static py::gil_safe_call_once_and_store<py::object> storage;
  return storage.call_once_and_store_result([] { return py::module_::import("imagerelay.errors"); })
      .get_stored();
}

}  // namespace

void BindErrors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      py::list problems;
      for (const auto& problem : e.problems()) {
        problems.append(py::make_tuple(problem.code, problem.message));
      }
      py::object factory = ErrorsModule().attr("error_for_code");
      py::object exc = factory(e.code(), e.message(), problems, e.http_status());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
  m.def("_raise_for_test", [](const std::string& code, const std::string& message) {
    ThrowCode(code, message);
  }, "Raises the exception of `code` (for tests of the error mapping).");
}

}  // namespace imagerelay::bindings
