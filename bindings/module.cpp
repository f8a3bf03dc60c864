#include <curl/curl.h>

#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
  m.doc() = "imagerelay's C++ core (private: use the imagerelay package)";
#ifdef IMAGERELAY_VERSION
  m.attr("__version__") = IMAGERELAY_VERSION;
#endif
  // libcurl's global state must be set up once, before any thread uses it.
  curl_global_init(CURL_GLOBAL_DEFAULT);
  imagerelay::bindings::BindErrors(m);
  imagerelay::bindings::BindModel(m);
  imagerelay::bindings::BindEngine(m);
  imagerelay::bindings::BindLog(m);
}
