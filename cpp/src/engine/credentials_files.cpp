#include "engine/credentials_files.hpp"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/file_util.hpp"
#include "imagerelay/error.hpp"

namespace imagerelay {

std::filesystem::path CredentialsFiles::PathOf(const std::string& region_id) const {
  return dir_ / (region_id + ".json");  // region ids are [a-z0-9-]: safe as file names
}

sigv4::Credentials CredentialsFiles::Parse(const std::string& json) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  sigv4::Credentials credentials;
  // A field that is not a string counts as missing (value() would throw a type_error, found by
  // fuzzing).
  auto text = [&](const char* key) {
    const auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (j.is_object()) {
    credentials.access_key_id = text("access_key_id");
    credentials.secret_access_key = text("secret_access_key");
    credentials.session_token = text("session_token");
  }
  return credentials;
}

void CredentialsFiles::Put(const std::string& region_id,
                           const sigv4::Credentials& credentials) const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec || ::chmod(dir_.c_str(), 0700) != 0) {
    throw ValidationError(codes::kInvalidParameter, "cannot create the credentials directory " +
                                                        dir_.string() +
                                                        "; check the home's permissions");
  }
  const std::string text = nlohmann::json{{"access_key_id", credentials.access_key_id},
                                          {"secret_access_key", credentials.secret_access_key},
                                          {"session_token", credentials.session_token}}
                               .dump();
  std::string problem =
      WriteFileAtomically(dir_, region_id + ".json", std::as_bytes(std::span(text)), 0600);
  if (!problem.empty()) {
    throw ValidationError(codes::kInvalidParameter,
                          "cannot save the credentials of region " + region_id + ": " + problem);
  }
}

void CredentialsFiles::Remove(const std::string& region_id) const {
  std::error_code ec;
  std::filesystem::remove(PathOf(region_id), ec);
  if (ec) {
    throw ValidationError(codes::kInvalidParameter,
                          "cannot remove the credentials file " + PathOf(region_id).string() +
                              ": " + ec.message() + "; check the home's permissions");
  }
}

std::optional<sigv4::Credentials> CredentialsFiles::Get(const std::string& region_id) const {
  std::ifstream in(PathOf(region_id));
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return Parse(text.str());
}

}  // namespace imagerelay
