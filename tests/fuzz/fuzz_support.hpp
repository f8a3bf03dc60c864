// What the fuzz targets share (tests/fuzz/README.md): the rule every parser keeps (it answers
// any input with its result or with imagerelay's Error and a stable code, nothing else), the
// input's split into parts, and the stand-in HTTP server some targets answer through.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "base/unique_fd.hpp"
#include "imagerelay/error.hpp"
#include "net/http_client.hpp"

namespace imagerelay::fuzz {

// A broken rule in the replay test (tests/cpp/fuzz_replay_test.cpp): not a std::exception,
// so that no catch of the parsers' errors takes it for one.
struct RuleBroken {
  std::string what;
};

// A broken rule: printed, then abort(), which libFuzzer reports as a crash; the replay test
// gets a RuleBroken.
[[noreturn]] inline void Fail(const std::string& what) {
#ifdef IMAGERELAY_FUZZ_REPLAY
  throw RuleBroken{what};
#else
  std::fprintf(stderr, "fuzz target rule broken: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
#endif
}

inline void Require(bool ok, const std::string& what) {
  if (!ok) Fail(what);
}

// True if `code` is one of the stable codes (error.hpp).
inline bool IsStableCode(std::string_view code) {
  const auto all = AllErrorCodes();
  return std::find(all.begin(), all.end(), code) != all.end();
}

// Runs `parse`: it may return or throw imagerelay's Error with a stable code (and, where
// `transient_ok`, the stores' TransientError: "try again"); anything else breaks the rule.
inline void OnlyStableErrors(const std::function<void()>& parse, bool transient_ok = false) {
  try {
    parse();
  } catch (const Error& e) {
    Require(IsStableCode(e.code()), "an Error with the unknown code \"" + e.code() + "\"");
    Require(!e.message().empty(), "an Error without a message (" + e.code() + ")");
  } catch (const TransientError& e) {
    if (!transient_ok) Fail(std::string("a TransientError escaped: ") + e.what());
  } catch (const std::exception& e) {
    Fail(std::string("a ") + typeid(e).name() + " escaped: " + e.what());
  }
}

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// `text` cut at every `separator`.
inline std::vector<std::string_view> Split(std::string_view text, std::string_view separator) {
  std::vector<std::string_view> parts;
  for (;;) {
    const size_t at = text.find(separator);
    if (at == std::string_view::npos) {
      parts.push_back(text);
      return parts;
    }
    parts.push_back(text.substr(0, at));
    text.remove_prefix(at + separator.size());
  }
}

// The first line of `text` (without its '\n'); `text` keeps the rest.
inline std::string_view TakeLine(std::string_view& text) {
  const size_t end = text.find('\n');
  std::string_view line = text.substr(0, end);
  text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
  return line;
}

// An unnamed file in memory holding `bytes`, for parsers that read a file descriptor.
inline UniqueFd MemoryFile(std::span<const std::byte> bytes) {
  UniqueFd fd(::memfd_create("fuzz", MFD_CLOEXEC));
  Require(static_cast<bool>(fd), "memfd_create failed");
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    Require(n > 0, "writing the memory file failed");
    done += static_cast<size_t>(n);
  }
  return fd;
}

// One answer of the stand-in server, written in the input as
//   <status> [reason]\n<Name: value>\n...\n\n<body>
// ("200\nContent-Length: 3\n\nabc"); answers are separated by kAnswerSeparator.
inline constexpr std::string_view kAnswerSeparator = "\n=====\n";

struct Answer {
  std::string status_line;  // "HTTP/1.1 200 OK"
  std::vector<std::string> headers;
  std::string body;
};

inline Answer ParseAnswer(std::string_view text) {
  Answer answer;
  answer.status_line = "HTTP/1.1 " + std::string(TakeLine(text));
  while (!text.empty()) {
    std::string_view line = TakeLine(text);
    if (line.empty()) break;
    answer.headers.emplace_back(line);
  }
  answer.body = std::string(text);
  return answer;
}

// Sends `answer` through a stand-in transport's callbacks; a HEAD gets no body. The body
// goes in pieces of `piece` bytes, as a network delivers it.
inline void Deliver(const Answer& answer, const HttpRequest& request,
                    const HttpAnswerHeader& header, const HttpAnswerBody& body,
                    size_t piece = 4096) {
  header(answer.status_line + "\r\n");
  for (const std::string& line : answer.headers) header(line + "\r\n");
  header("\r\n");
  if (request.method == "HEAD") return;
  const auto* bytes = reinterpret_cast<const std::byte*>(answer.body.data());
  for (size_t at = 0; at < answer.body.size(); at += piece) {
    if (!body(std::span(bytes + at, std::min(piece, answer.body.size() - at)))) return;
  }
}

// Installs a stand-in transport for the life of the object (SetHttpTransportForTesting).
class ScopedTransport {
 public:
  explicit ScopedTransport(HttpTransport transport) {
    SetHttpTransportForTesting(std::move(transport));
  }
  ~ScopedTransport() { SetHttpTransportForTesting({}); }
  ScopedTransport(const ScopedTransport&) = delete;
  ScopedTransport& operator=(const ScopedTransport&) = delete;
};

// A server that gives its answers in order, one per request, then fails every request as a
// dropped connection would. Safe from several threads.
class AnswerQueue {
 public:
  explicit AnswerQueue(std::string_view answers) {
    if (answers.empty()) return;
    for (std::string_view text : Split(answers, kAnswerSeparator)) {
      answers_.push_back(ParseAnswer(text));
    }
  }
  HttpTransport Transport() {
    return [this](const HttpRequest& request, const HttpAnswerHeader& header,
                  const HttpAnswerBody& body) {
      const Answer* answer = nullptr;
      {
        std::lock_guard lock(mutex_);
        if (next_ < answers_.size()) answer = &answers_[next_++];
      }
      if (answer == nullptr) throw TransientError("the stand-in server has no more answers");
      Deliver(*answer, request, header, body);
    };
  }

 private:
  std::mutex mutex_;
  std::vector<Answer> answers_;
  size_t next_ = 0;
};

}  // namespace imagerelay::fuzz
