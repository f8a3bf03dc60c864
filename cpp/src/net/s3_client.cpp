#include "net/s3_client.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdlib>
#include <set>
#include <string>
#include <utility>

#include "base/fail_point.hpp"
#include "base/parse_util.hpp"
#include "imagerelay/error.hpp"
#include "imagerelay/sha256.hpp"
#include "imagerelay/store.hpp"

namespace imagerelay {
namespace {

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 && HexValue(s[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2]));
      i += 2;
    } else if (s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string XmlUnescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out += s[i];
      continue;
    }
    std::string_view entity = s.substr(i + 1, semi - i - 1);
    if (entity == "amp")
      out += '&';
    else if (entity == "lt")
      out += '<';
    else if (entity == "gt")
      out += '>';
    else if (entity == "quot")
      out += '"';
    else if (entity == "apos")
      out += '\'';
    else if (entity.starts_with("#x"))
      out += static_cast<char>(std::strtol(std::string(entity.substr(2)).c_str(), nullptr, 16));
    else if (entity.starts_with("#"))
      out += static_cast<char>(std::strtol(std::string(entity.substr(1)).c_str(), nullptr, 10));
    else
      out += std::string(s.substr(i, semi - i + 1));
    i = semi;
  }
  return out;
}

std::string Getenv(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

constexpr std::array<std::string_view, 6> kS3Settings = {
    "endpoint", "region", "addressing", "verify_tls", "ca_bundle", "low_speed_time"};

// A setting's name as an error shows it. A name is part of the query, where a secret might be
// (a value pasted without its `name=`, or another setting's value repeated as a name): a
// known name is shown, any other only if short and plainly a name.
std::string ShownSettingName(const std::string& name) {
  constexpr size_t kMaxShown = 12;
  const bool known = std::find(kS3Settings.begin(), kS3Settings.end(), name) != kS3Settings.end();
  const bool plain = !name.empty() && name.size() <= kMaxShown &&
                     std::all_of(name.begin(), name.end(), [](char c) {
                       return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                     });
  return known || plain ? "\"" + name + "\"" : "(its name not shown: not a setting's name)";
}

}  // namespace

std::vector<std::string> XmlAll(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  const std::string open = "<" + std::string(tag) + ">";
  const std::string close = "</" + std::string(tag) + ">";
  size_t pos = 0;
  while ((pos = xml.find(open, pos)) != std::string_view::npos) {
    size_t begin = pos + open.size();
    size_t end = xml.find(close, begin);
    if (end == std::string_view::npos) break;
    out.push_back(XmlUnescape(xml.substr(begin, end - begin)));
    pos = end + close.size();
  }
  return out;
}

std::string XmlFirst(std::string_view xml, std::string_view tag) {
  auto all = XmlAll(xml, tag);
  return all.empty() ? "" : all.front();
}

S3Location ParseS3Uri(const std::string& uri) {
  if (std::string problem = CheckStoreUri(uri); !problem.empty()) Invalid(problem);
  S3Location loc;
  std::string_view rest = std::string_view(uri).substr(5);  // after s3://
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  size_t slash = rest.find('/');
  loc.bucket = std::string(rest.substr(0, slash));
  if (slash != std::string_view::npos) {
    std::string prefix = PercentDecode(rest.substr(slash + 1));
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    while (!prefix.empty() && prefix.front() == '/') prefix.erase(0, 1);
    loc.prefix = prefix;
  }
  std::string endpoint;
  std::string addressing = "path";
  if (std::string region = Getenv("AWS_REGION"); !region.empty()) loc.region = region;
  loc.ca_bundle = Getenv("AWS_CA_BUNDLE");  // the AWS tools' variable; ca_bundle= overrides it
  std::set<std::string> seen;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t eq = param.find('=');
    std::string key(param.substr(0, eq));
    std::string value = eq == std::string_view::npos ? "" : PercentDecode(param.substr(eq + 1));
    // Once each: a checker reading the first `endpoint` must not pass one the client takes
    // from the last.
    if (!seen.insert(key).second) {
      Invalid("the setting " + ShownSettingName(key) + " is given twice in S3 store URI s3://" +
              loc.bucket);
    }
    if (key == "endpoint")
      endpoint = value;
    else if (key == "region")
      loc.region = value;
    else if (key == "addressing")
      addressing = value;
    else if (key == "low_speed_time") {
      loc.low_speed_time_s = std::strtol(value.c_str(), nullptr, 10);
      if (loc.low_speed_time_s <= 0 || loc.low_speed_time_s > 3600) {
        Invalid("low_speed_time must be 1 to 3600 seconds in S3 store URI s3://" + loc.bucket);
      }
    } else if (key == "verify_tls")
      loc.verify_tls = !(value == "false" || value == "0" || value == "no");
    else if (key == "ca_bundle")
      loc.ca_bundle = value;
    else {
      std::string known;
      for (std::string_view name : kS3Settings)
        known += (known.empty() ? "" : ", ") + std::string(name);
      Invalid("unknown setting " + ShownSettingName(key) + " in S3 store URI s3://" + loc.bucket +
              "; known: " + known + " (credentials are given to add_region, never in the URI)");
    }
  }
  if (addressing != "path" && addressing != "virtual") {
    Invalid("addressing must be \"path\" or \"virtual\" in S3 store URI s3://" + loc.bucket);
  }
  loc.virtual_host = addressing == "virtual";
  if (loc.region.empty() || !std::all_of(loc.region.begin(), loc.region.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
      })) {
    Invalid("invalid region in S3 store URI s3://" + loc.bucket + ": e.g. region=us-east-1");
  }
  if (endpoint.empty()) endpoint = "https://s3." + loc.region + ".amazonaws.com";
  size_t sep = endpoint.find("://");
  if (sep == std::string::npos)
    Invalid("endpoint must be http://host[:port] or https://host[:port] in S3 store URI s3://" +
            loc.bucket);
  loc.scheme = endpoint.substr(0, sep);
  for (char& c : loc.scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  loc.host = endpoint.substr(sep + 3);
  while (!loc.host.empty() && loc.host.back() == '/') loc.host.pop_back();
  // The host goes into the Host header and the URL: no control character (a percent-encoded
  // CR LF in endpoint= would add a header of its own; found by fuzzing).
  if ((loc.scheme != "http" && loc.scheme != "https") || loc.host.empty() ||
      loc.host.find_first_of("/?#@ ") != std::string::npos ||
      std::any_of(loc.host.begin(), loc.host.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
    Invalid(
        "endpoint must be http://host[:port] or https://host[:port] (no path) in S3 store "
        "URI s3://" +
        loc.bucket);
  }
  for (char& c : loc.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // A default port is left out of the Host header (and so of the signature).
  if (loc.scheme == "https" && loc.host.ends_with(":443")) loc.host.resize(loc.host.size() - 4);
  if (loc.scheme == "http" && loc.host.ends_with(":80")) loc.host.resize(loc.host.size() - 3);
  loc.display = "s3://" + loc.bucket + (loc.prefix.empty() ? "" : "/" + loc.prefix);
  return loc;
}

S3Client::S3Client(S3Location location, sigv4::Credentials credentials, HttpOptions http)
    : location_(std::move(location)), credentials_(std::move(credentials)), http_([&] {
        http.verify_tls = http.verify_tls && location_.verify_tls;
        if (http.ca_bundle.empty()) http.ca_bundle = location_.ca_bundle;
        if (location_.low_speed_time_s > 0) http.low_speed_time_s = location_.low_speed_time_s;
        return http;
      }()) {
  if (credentials_.empty()) {
    credentials_.access_key_id = Getenv("AWS_ACCESS_KEY_ID");
    credentials_.secret_access_key = Getenv("AWS_SECRET_ACCESS_KEY");
    credentials_.session_token = Getenv("AWS_SESSION_TOKEN");
  }
}

HttpRequest S3Client::Signed(const Call& call, std::time_t now) const {
  const S3Location& loc = location_;
  std::string host = loc.virtual_host ? loc.bucket + "." + loc.host : loc.host;
  std::string path = loc.virtual_host ? "/" + call.key
                                      : "/" + loc.bucket + (call.key.empty() ? "" : "/" + call.key);
  sigv4::Request sign;
  sign.method = call.method;
  sign.path = path;
  sign.query = call.query;
  sign.payload_hash = call.payload_hash;
  if (sign.payload_hash.empty()) {
    sign.payload_hash = call.body.empty() ? sigv4::kEmptyPayloadHash
                                          : Sha256Hex(call.body.data(), call.body.size());
  }
  std::string canonical = sigv4::CanonicalRequest(sign);  // for the query string only
  std::string query_line = canonical.substr(canonical.find('\n', canonical.find('\n') + 1) + 1);
  query_line = query_line.substr(0, query_line.find('\n'));

  HttpRequest request;
  request.method = call.method;
  request.url = loc.scheme + "://" + host + sigv4::UriEncode(path, false) +
                (query_line.empty() ? "" : "?" + query_line);
  request.body = call.body;
  request.headers = call.headers;
  request.headers.emplace_back("Host", host);
  request.headers.emplace_back("x-amz-content-sha256", sign.payload_hash);
  if (credentials_.empty()) return request;  // anonymous
  std::string amz_date = sigv4::AmzDate(now);
  request.headers.emplace_back("x-amz-date", amz_date);
  if (!credentials_.session_token.empty()) {
    request.headers.emplace_back("x-amz-security-token", credentials_.session_token);
  }
  sign.headers = request.headers;
  request.headers.emplace_back("Authorization",
                               sigv4::Authorization(sign, credentials_, loc.region, amz_date));
  return request;
}

HttpResponse S3Client::Perform(Call call, const CancelToken* cancel) {
  if (call.payload_hash.empty() && !call.body.empty()) {
    call.payload_hash = Sha256Hex(call.body.data(), call.body.size());  // once, not per attempt
  }
  HttpRequest request = Signed(call, std::time(nullptr));
  request.sink = call.sink;
  request.max_body = call.max_body;
  request.on_body = std::move(call.on_body);
  // Writes to the bucket (objects put, copied, deleted; multipart steps) are the durable
  // steps of an S3 region.
  const bool writes = call.method != "GET" && call.method != "HEAD";
  if (writes) FailPoint("s3.write");
  HttpResponse response;
  if (!call.retry) {
    response = http_.PerformOnce(request, cancel);
  } else {
    // A retry is signed at its own time: the first attempt goes with the headers above.
    bool first = true;
    auto sign = [&](HttpRequest& r) {
      if (!std::exchange(first, false)) r.headers = Signed(call, std::time(nullptr)).headers;
    };
    // S3 also refuses, with a 400, a body that reached it damaged or cut short
    // (XAmzContentSHA256Mismatch, BadDigest, IncompleteBody) or too slowly (RequestTimeout):
    // the bytes here are right, so the request is sent again.
    for (int round = 1;; ++round) {
      response = http_.Request(request, sign, cancel, call.attempts);
      if (response.status != 400 || round >= call.attempts ||
          !IsTransientCode(XmlFirst(response.body, "Code"))) {
        break;
      }
      http_.SleepBackoff(round, cancel);
    }
  }
  if (writes) FailPoint("s3.written");
  return response;
}

bool S3Client::SameServiceAs(const S3Client& other) const {
  return other.location_.scheme == location_.scheme && other.location_.host == location_.host &&
         other.location_.region == location_.region &&
         other.credentials_.access_key_id == credentials_.access_key_id &&
         other.credentials_.secret_access_key == credentials_.secret_access_key &&
         other.credentials_.session_token == credentials_.session_token;
}

std::string S3Client::Reason(const HttpResponse& response) {
  std::string out = std::to_string(response.status);
  std::string code = XmlFirst(response.body, "Code");
  std::string message = XmlFirst(response.body, "Message");
  if (!code.empty()) out += " " + code.substr(0, 100);
  if (!message.empty()) out += ": " + message.substr(0, 300);
  if (code.empty() && message.empty()) {
    if (response.status == 403)
      out += " Forbidden";
    else if (response.status == 404)
      out += " Not Found";
    else if (response.status == 503)
      out += " Service Unavailable";
  }
  return out;
}

bool S3Client::IsTransientCode(std::string_view code) {
  return code == "InternalError" || code == "SlowDown" || code == "ServiceUnavailable" ||
         code == "RequestTimeout" || code == "XAmzContentSHA256Mismatch" || code == "BadDigest" ||
         code == "IncompleteBody";
}

}  // namespace imagerelay
