// Helpers shared by the service unit tests.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

namespace ota::service::testing {

// A fresh temporary directory, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ota-svc-test-XXXXXX";
    char* p = mkdtemp(tmpl);
    path_ = p ? p : "/tmp";
  }
  ~TempDir() {
    std::string cmd = "rm -rf '" + path_ + "'";
    if (std::system(cmd.c_str()) != 0) {
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A new EC private key as PEM ("P-256" by default).
inline std::string make_ec_key_pem(const char* curve = "P-256") {
  EVP_PKEY* k = EVP_EC_gen(curve);
  if (!k) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, k, nullptr, nullptr, 0, nullptr, nullptr);
  char* p = nullptr;
  long n = BIO_get_mem_data(bio, &p);
  std::string out(p, static_cast<std::size_t>(n));
  BIO_free(bio);
  EVP_PKEY_free(k);
  return out;
}

}  // namespace ota::service::testing
