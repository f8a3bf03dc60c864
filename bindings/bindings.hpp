// pybind11 glue for imagerelay's core: one bind_<area> function per core area.
#pragma once

#include <pybind11/pybind11.h>

namespace imagerelay::bindings {

void BindErrors(pybind11::module_& m);
void BindModel(pybind11::module_& m);
void BindEngine(pybind11::module_& m);
void BindLog(pybind11::module_& m);

}  // namespace imagerelay::bindings
