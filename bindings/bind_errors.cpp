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
      py::object factory = ErrorsModule().attr("error_for_kind");
      py::object exc = factory(std::string(ErrorKindName(e.kind())), e.code(), e.message(),
                               problems, e.http_status());
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    }
  });
  m.def(
      "_raise_for_test",
      [](const std::string& code, const std::string& message) { ThrowCode(code, message); },
      "Raises the exception of `code` (for tests of the error mapping).");
  m.def(
      "error_kind",
      [](const std::string& code) { return std::string(ErrorKindName(KindOfCode(code))); },
      py::arg("code"), "The kind of a stable error code (its Python class): \"Validation\", ...");
  m.def("error_http_status", &HttpStatusOfCode, py::arg("code"),
        "The HTTP status of a stable error code.");
  m.def(
      "error_codes",
      [] {
        std::vector<std::string> out;
        for (std::string_view code : AllErrorCodes()) out.emplace_back(code);
        return out;
      },
      "Every stable error code the core raises.");
}

}  // namespace imagerelay::bindings
