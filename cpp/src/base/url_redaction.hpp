// URLs as messages, events and logs may show them: what names the source (scheme, host,
// path, harmless settings) stays; what is a credential goes.
#pragma once

#include <string>
#include <string_view>

namespace imagerelay {

// `url` with the password (or the token standing alone) of its user part and the values of
// query settings that carry credentials (a presigned URL's signature, tokens, keys) replaced
// by "***". Anything without "://" (a file path) is returned as it is.
std::string RedactUrl(std::string_view url);

}  // namespace imagerelay
