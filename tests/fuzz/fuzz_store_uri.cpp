// Region store URIs (store.cpp CheckStoreUri, net/s3_client.cpp ParseS3Uri): a path, a
// file:// URI or s3://bucket/prefix?settings, as add_region and the CLI take them, and the
// request URL an S3 location then builds for an object key. The input's first line is the
// URI, the rest an object key. A URI is refused with InvalidParameter, never echoing its query
// (where a secret might be); one that passes the check parses, and builds URLs on its host.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "imagerelay/store.hpp"
#include "net/s3_client.hpp"

namespace {

// The message for `uri` (CheckStoreUri's problem, else what ParseS3Uri throws), "" if none.
std::string MessageFor(const std::string& uri) {
  using namespace imagerelay;
  if (std::string problem = CheckStoreUri(uri); !problem.empty()) return problem;
  if (!(uri.starts_with("s3://") || uri.starts_with("S3://"))) return "";
  try {
    ParseS3Uri(uri);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// `text` with each letter and digit replaced by the next of its kind (z by a, 9 by 0), but
// the two after a '%' (an escape decodes as before).
std::string Shifted(std::string text) {
  for (size_t i = 0; i < text.size(); ++i) {
    char& c = text[i];
    if (c == '%') {
      i += 2;
    } else if (c >= 'a' && c <= 'z') {
      c = c == 'z' ? 'a' : static_cast<char>(c + 1);
    } else if (c >= 'A' && c <= 'Z') {
      c = c == 'Z' ? 'A' : static_cast<char>(c + 1);
    } else if (c >= '0' && c <= '9') {
      c = c == '9' ? '0' : static_cast<char>(c + 1);
    }
  }
  return text;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  std::string_view rest = AsText(data, size);
  const std::string uri(TakeLine(rest));
  const std::string key(rest);
  // The values of the query's settings long enough not to turn up in a message by chance.
  std::vector<std::string> values;
  const size_t query_at = std::min(uri.find('?'), uri.size());
  for (std::string_view param : Split(std::string_view(uri).substr(query_at), "&")) {
    if (const size_t eq = param.find('='); eq != std::string_view::npos && param.size() - eq > 12)
      values.emplace_back(param.substr(eq + 1));
  }
  // A value in the message is the query shown, unless the message for the URI with that value
  // changed wherever the query has it still has it: then it is the message's own text, or the
  // URI's before its query. Changed alike (each letter or digit the next one, escapes kept),
  // so that the URI is refused for the same reason.
  auto shows_query = [&](const std::string& message) {
    for (const std::string& value : values) {
      if (message.find(value) == std::string::npos) continue;
      const std::string changed = Shifted(value);
      if (changed == value) continue;  // no letter or digit: nothing to tell it by
      std::string other = uri;
      for (size_t at = other.find(value, query_at); at != std::string::npos;
           at = other.find(value, at + changed.size())) {
        other.replace(at, value.size(), changed);
      }
      if (MessageFor(other).find(value) == std::string::npos) return true;
    }
    return false;
  };

  const std::string problem = CheckStoreUri(uri);
  Require(!shows_query(problem), "a refused URI's message shows its query: " + problem);
  const bool s3 = uri.size() >= 5 && (uri.starts_with("s3://") || uri.starts_with("S3://"));
  if (!s3) return 0;
  OnlyStableErrors([&] {
    try {
      const S3Location loc = ParseS3Uri(uri);
      Require(problem.empty(), "ParseS3Uri took a URI CheckStoreUri refuses: " + problem);
      Require(loc.scheme == "http" || loc.scheme == "https", "an endpoint scheme " + loc.scheme);
      Require(!loc.host.empty() && loc.host.find_first_of("/?#@ ") == std::string::npos,
              "an endpoint host \"" + loc.host + "\"");
      // The bucket and the decoded prefix, nothing of the query.
      Require(loc.display == "s3://" + loc.bucket + (loc.prefix.empty() ? "" : "/" + loc.prefix),
              "a display URI other than s3://bucket/prefix: " + loc.display);
      S3Client client(loc, sigv4::Credentials{"AKIDFUZZ", "fuzz-secret", ""});
      S3Client::Call call;
      call.key = key;
      call.query = {{"prefix", key}};
      const HttpRequest request = client.Signed(call, 1369353600);
      const std::string origin =
          loc.scheme + "://" + (loc.virtual_host ? loc.bucket + "." : "") + loc.host + "/";
      Require(request.url.starts_with(origin), "a request URL off its endpoint: " + request.url);
      for (const auto& [name, value] : request.headers) {
        for (char c : value) {
          Require(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f,
                  "a control character in the " + name + " header");
        }
      }
      for (char c : request.url) {
        Require(static_cast<unsigned char>(c) > 0x20 && c != 0x7f && c != '#',
                "a space, control character or '#' in the request URL " + request.url);
      }
    } catch (const Error& e) {
      Require(!problem.empty() || e.code() == codes::kInvalidParameter,
              "a URI refused with " + e.code());
      Require(!shows_query(e.message()), "a refused URI's message shows its query");
      throw;
    }
  });
  return 0;
}
