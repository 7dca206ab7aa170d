// ota-pki-devices: issues many device certificates in one process for broker-config/pki.sh
// (`pki.sh devices` runs it when it is built or installed, and falls back to one openssl
// process per certificate otherwise, ~2.5 a second). Each certificate is exactly what
// pki.sh's issue() makes with `openssl req -x509 -CA`: a new P-256 key (PKCS#8 PEM, no
// passphrase), subject CN=ID, issuer and signing key the PKI's CA, the extension profile from
// DIR/openssl.cnf, a random positive 127-bit serial, valid from now for --days, SHA-256.
// Files: DIR/devices/ID.key (0600) and ID.crt (0644), written to temporaries and renamed, key
// first, so a crash never leaves a certificate without its key.
//
//   ota-pki-devices --dir DIR --days N [--profile v3_client] < ids (one per line)
//
// The ids are checked by pki.sh; existing files are replaced (pki.sh passes only the ids
// whose pair is missing). Exit 0 when every certificate was written, 1 otherwise.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <openssl/conf.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Conf = std::unique_ptr<CONF, Deleter<CONF, NCONF_free>>;
using Bignum = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

std::string openssl_error() {
  char buf[256] = "unknown error";
  const unsigned long e = ERR_get_error();
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

// The CA and the extension profile every certificate of one run shares.
struct Issuer {
  Cert ca_cert;
  Pkey ca_key;
  Conf conf;
  std::string profile;
  long days = 825;
};

bool load_issuer(const std::string& dir, Issuer& is, std::string& error) {
  File crt(std::fopen((dir + "/ca.crt").c_str(), "r"));
  File key(std::fopen((dir + "/ca.key").c_str(), "r"));
  if (!crt || !key) {
    error = "cannot open " + dir + "/ca.crt and ca.key: " + std::strerror(errno);
    return false;
  }
  is.ca_cert.reset(PEM_read_X509(crt.get(), nullptr, nullptr, nullptr));
  is.ca_key.reset(PEM_read_PrivateKey(key.get(), nullptr, nullptr, nullptr));
  if (!is.ca_cert || !is.ca_key) {
    error = "cannot read the CA: " + openssl_error();
    return false;
  }
  if (X509_check_private_key(is.ca_cert.get(), is.ca_key.get()) != 1) {
    error = dir + "/ca.key does not belong to ca.crt";
    return false;
  }
  is.conf.reset(NCONF_new(nullptr));
  long bad_line = 0;
  if (NCONF_load(is.conf.get(), (dir + "/openssl.cnf").c_str(), &bad_line) != 1) {
    error = "cannot read " + dir + "/openssl.cnf (line " + std::to_string(bad_line) + "): " + openssl_error();
    return false;
  }
  if (NCONF_get_section(is.conf.get(), is.profile.c_str()) == nullptr) {
    error = "no section [ " + is.profile + " ] in " + dir + "/openssl.cnf";
    ERR_clear_error();
    return false;
  }
  return true;
}

// A random positive 127-bit serial (pki.sh's rand_serial()).
bool set_random_serial(X509* x) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return false;
  bytes[0] &= 0x7f;
  Bignum bn(BN_bin2bn(bytes, sizeof bytes, nullptr));
  return bn && BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x)) != nullptr;
}

Cert make_certificate(const Issuer& is, const std::string& cn, EVP_PKEY* key) {
  Cert x(X509_new());
  if (!x || X509_set_version(x.get(), X509_VERSION_3) != 1 || !set_random_serial(x.get()) ||
      X509_set_issuer_name(x.get(), X509_get_subject_name(is.ca_cert.get())) != 1 ||
      X509_gmtime_adj(X509_getm_notBefore(x.get()), 0) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(x.get()), static_cast<int>(is.days), 0, nullptr) == nullptr ||
      X509_set_pubkey(x.get(), key) != 1) {
    return nullptr;
  }
  X509_NAME* subject = X509_get_subject_name(x.get());
  if (X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0) != 1) {
    return nullptr;
  }
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, is.ca_cert.get(), x.get(), nullptr, nullptr, 0);
  X509V3_set_nconf(&ctx, is.conf.get());
  if (X509V3_EXT_add_nconf(is.conf.get(), &ctx, is.profile.c_str(), x.get()) != 1) return nullptr;
  if (X509_sign(x.get(), is.ca_key.get(), EVP_sha256()) <= 0) return nullptr;
  return x;
}

// Writes through `write` into path.tmp (created with `mode`), then renames it to path.
template <typename Write>
bool write_file(const std::string& path, mode_t mode, Write write, std::string& error) {
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    error = "cannot create " + tmp + ": " + std::strerror(errno);
    return false;
  }
  ::fchmod(fd, mode);  // not narrowed by the umask
  File f(::fdopen(fd, "w"));
  if (!f) {
    ::close(fd);
    error = "fdopen " + tmp;
    return false;
  }
  const bool wrote = write(f.get());
  const bool closed = std::fclose(f.release()) == 0;
  if (!wrote || !closed || ::rename(tmp.c_str(), path.c_str()) != 0) {
    error = "cannot write " + path + ": " + (wrote ? std::strerror(errno) : openssl_error());
    ::unlink(tmp.c_str());
    return false;
  }
  return true;
}

// P-256 key generation set up once per thread (EVP_EC_gen() fetches the algorithm and
// decodes its parameters again for every key).
class KeyGenerator {
 public:
  KeyGenerator() : ctx_(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr)) {
    ok_ = ctx_ && EVP_PKEY_keygen_init(ctx_.get()) == 1 &&
          EVP_PKEY_CTX_set_group_name(ctx_.get(), "P-256") == 1;
  }
  Pkey generate() {
    EVP_PKEY* key = nullptr;
    if (!ok_ || EVP_PKEY_keygen(ctx_.get(), &key) != 1) return nullptr;
    return Pkey(key);
  }

 private:
  PkeyCtx ctx_;
  bool ok_ = false;
};

bool issue(const Issuer& is, KeyGenerator& keys, const std::string& dir, const std::string& id,
           std::string& error) {
  Pkey key = keys.generate();
  Cert cert = key ? make_certificate(is, id, key.get()) : nullptr;
  if (!cert) {
    error = openssl_error();
    return false;
  }
  const std::string base = dir + "/devices/" + id;
  return write_file(base + ".key", 0600,
                    [&](FILE* f) {
                      return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr,
                                                  nullptr) == 1;
                    },
                    error) &&
         write_file(base + ".crt", 0644,
                    [&](FILE* f) { return PEM_write_X509(f, cert.get()) == 1; }, error);
}

// Issues ids[first], ids[first + stride], ... ; the number that failed (each is printed).
int issue_share(const Issuer& is, const std::string& dir, const std::vector<std::string>& ids,
                std::size_t first, std::size_t stride) {
  KeyGenerator keys;
  int failed = 0;
  std::string error;
  for (std::size_t i = first; i < ids.size(); i += stride) {
    if (!issue(is, keys, dir, ids[i], error)) {
      std::fprintf(stderr, "ota-pki-devices: certificate for '%s' failed: %s\n", ids[i].c_str(),
                   error.c_str());
      ++failed;
    }
  }
  return failed;
}

int usage() {
  std::fprintf(stderr, "usage: ota-pki-devices --dir DIR --days N [--profile SECTION] < ids\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Issuer is;
  is.profile = "v3_client";
  std::string dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return usage();
    if (arg == "--dir") dir = argv[++i];
    else if (arg == "--days") is.days = std::atol(argv[++i]);
    else if (arg == "--profile") is.profile = argv[++i];
    else return usage();
  }
  if (dir.empty() || is.days <= 0) return usage();
  std::string error;
  if (!load_issuer(dir, is, error)) {
    std::fprintf(stderr, "ota-pki-devices: %s\n", error.c_str());
    return 1;
  }
  std::vector<std::string> ids;
  for (std::string id; std::getline(std::cin, id);) {
    if (!id.empty()) ids.push_back(id);
  }
  // One thread: OpenSSL 3.0's shared caches make parallel issuing slower here, not faster
  // (measured: 10,000 certificates 2.8x slower on two threads, mostly futex time).
  const int failed = issue_share(is, dir, ids, 0, 1);
  return failed == 0 ? 0 : 1;
}
