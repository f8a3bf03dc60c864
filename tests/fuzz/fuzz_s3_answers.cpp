// What an S3 server answers (store/s3_store.cpp, s3_pack_files.cpp, net/s3_client.cpp): the
// ListObjectsV2 pages a listing walks, error documents, CopyObject's answer (with its
// SHA-256 in base64, or an error inside a 200), the store marker's JSON, object lengths in
// Content-Length. The input's first line names the store call; the rest are the server's
// answers in order (fuzz_support.hpp: status line, headers, empty line, body; separated by
// "\n=====\n"), then the server hangs up. The call must return what S3 said, or throw
// imagerelay's Error or the stores' TransientError ("try again").
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "imagerelay/sha256.hpp"
#include "net/s3_client.hpp"
#include "store/local_store.hpp"
#include "store/pack_files.hpp"
#include "store/s3_store.hpp"

namespace imagerelay::fuzz {
namespace {

constexpr const char* kUri = "s3://fuzz-bucket/region?endpoint=http://127.0.0.1:9&region=us-east-1";
const sigv4::Credentials kCredentials{"AKIDFUZZ", "fuzz-secret", ""};

std::string HashOf(int i) {
  const std::string seed = std::to_string(i);
  return Sha256Hex(seed.data(), seed.size());
}

void RunCall(std::string_view call, S3Store& store) {
  const std::string hash = HashOf(0);
  if (call == "list-chunks") {
    const std::vector<std::string> chunks = store.ListChunks();
    Require(std::is_sorted(chunks.begin(), chunks.end()) &&
                std::adjacent_find(chunks.begin(), chunks.end()) == chunks.end(),
            "ListChunks not sorted and unique");
    for (const std::string& c : chunks) Require(IsChunkHash(c), "ListChunks gave \"" + c + "\"");
  } else if (call == "list-packs") {
    for (const auto& [name, size] : store.ListPacks()) {
      Require(IsPackName(name), "ListPacks gave \"" + name + "\"");
    }
  } else if (call == "list-manifests") {
    for (const std::string& id : store.ListManifests()) {
      Require(IsImageId(id), "ListManifests gave \"" + id + "\"");
    }
  } else if (call == "has-chunks") {
    // Enough hashes for a listing (with sizes) to be cheaper than HEADs.
    std::vector<std::string> hashes;
    std::vector<uint64_t> lengths;
    for (int i = 0; i < 128; ++i) {
      hashes.push_back(HashOf(i));
      lengths.push_back(65536);
    }
    Require(store.HasChunks(hashes, nullptr, lengths).size() == hashes.size(),
            "HasChunks gave another number of answers");
  } else if (call == "check") {
    store.Check();
  } else if (call == "copy-chunk") {
    S3Store source("s3://fuzz-source?endpoint=http://127.0.0.1:9&region=us-east-1", kCredentials);
    Require(store.CopyChunkFrom(source, hash, 65536, nullptr), "a copy between one service");
  } else if (call == "get-chunk") {
    std::vector<std::byte> out;
    store.GetChunk(hash, out);
  } else if (call == "has-chunk") {
    (void)store.HasChunkOfLength(hash, 65536);
    (void)store.StoredChunkSize(hash);
  } else if (call == "read-pack") {
    const std::string name(32, 'a');
    if (const std::optional<PackStat> stat = store.StatPack(name)) {
      std::vector<std::byte> out(static_cast<size_t>(std::min<uint64_t>(stat->size, 4096)));
      (void)store.ReadPack(name, stat->size - out.size(), out, nullptr);
    }
  } else if (call == "get-record") {
    (void)store.GetImageRecord("m-fuzz0001");
  }
}

}  // namespace
}  // namespace imagerelay::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imagerelay;
  using namespace imagerelay::fuzz;
  std::string_view text = AsText(data, size);
  const std::string_view call = TakeLine(text);
  // The XML readers and the error text on every answer, as given.
  if (!text.empty()) {
    for (std::string_view part : Split(text, kAnswerSeparator)) {
      const Answer answer = ParseAnswer(part);
      HttpResponse response;
      response.status = 400;
      response.body = answer.body;
      const std::string reason = S3Client::Reason(response);
      Require(reason.size() <= 420, "an error reason of " + std::to_string(reason.size()));
      for (const char* tag : {"Key", "Size", "Code", "NextContinuationToken"}) {
        (void)XmlAll(answer.body, tag);
      }
    }
  }
  AnswerQueue server(text);
  ScopedTransport transport(server.Transport());
  S3Store store(kUri, kCredentials);
  store.SetIndexDir(std::filesystem::temp_directory_path() / "imagerelay-fuzz-cache");
  OnlyStableErrors([&] { RunCall(call, store); }, /*transient_ok=*/true);
  return 0;
}
