#include "ota/service/signing.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

namespace ota::service {
namespace {

std::string ssl_err() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

std::string to_hex(const unsigned char* p, std::size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status check_p256(EVP_PKEY* k) {
  if (EVP_PKEY_base_id(k) != EVP_PKEY_EC) return invalid_err("not an EC key");
  char group[64] = {};
  std::size_t glen = 0;
  if (EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof group, &glen) != 1)
    return invalid_err("cannot read EC group");
  std::string g(group, glen);
  if (g != "prime256v1" && g != "P-256" && g != "secp256r1")
    return invalid_err("EC key is on curve " + g + ", need P-256 (prime256v1)");
  return {};
}

}  // namespace

void PkeyDeleter::operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }

std::string sha256_hex(const void* data, std::size_t len) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(static_cast<const unsigned char*>(data), len, md);
  return to_hex(md, sizeof md);
}

Result<std::string> key_id_of(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  if (n <= 0) return internal_err("i2d_PUBKEY: " + ssl_err());
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(der, static_cast<std::size_t>(n), md);
  OPENSSL_free(der);
  return to_hex(md, 8);
}

Result<Signer> Signer::from_pem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return internal_err("BIO_new_mem_buf failed");
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!k) return invalid_err("not a PEM private key: " + ssl_err());
  PkeyPtr key(k);
  Status p = check_p256(key.get());
  if (!p) return p.err();
  auto kid = key_id_of(key.get());
  if (!kid) return kid.err();
  Signer s;
  s.key_ = std::move(key);
  s.key_id_ = *kid;
  return s;
}

Result<Signer> Signer::load(const std::string& pem_path) {
  std::FILE* f = std::fopen(pem_path.c_str(), "rb");
  if (!f) return invalid_err("signing key " + pem_path + ": " + std::strerror(errno));
  std::string pem;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) pem.append(buf, n);
  std::fclose(f);
  auto s = from_pem(pem);
  if (!s) return s.context("signing key " + pem_path);
  return s;
}

std::string Signer::public_pem() const {
  BIO* bio = BIO_new(BIO_s_mem());
  if (!bio) return {};
  PEM_write_bio_PUBKEY(bio, key_.get());
  char* p = nullptr;
  long n = BIO_get_mem_data(bio, &p);
  std::string out(p, static_cast<std::size_t>(n));
  BIO_free(bio);
  return out;
}

Result<std::string> Signer::sign_hex(const void* data, std::size_t len) const {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) return internal_err("EVP_MD_CTX_new failed");
  std::vector<unsigned char> der;
  std::size_t dlen = 0;
  bool ok = EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key_.get()) == 1 &&
            EVP_DigestSign(ctx, nullptr, &dlen, static_cast<const unsigned char*>(data), len) == 1;
  if (ok) {
    der.resize(dlen);
    ok = EVP_DigestSign(ctx, der.data(), &dlen, static_cast<const unsigned char*>(data), len) == 1;
  }
  EVP_MD_CTX_free(ctx);
  if (!ok) return internal_err("EVP_DigestSign: " + ssl_err());
  const unsigned char* p = der.data();
  ECDSA_SIG* sig = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(dlen));
  if (!sig) return internal_err("d2i_ECDSA_SIG: " + ssl_err());
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig, &r, &s);
  unsigned char raw[64];
  bool ok2 = BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32;
  ECDSA_SIG_free(sig);
  if (!ok2) return internal_err("BN_bn2binpad failed");
  return to_hex(raw, 64);
}

Status Signer::sign_manifest(proto::Manifest& m) const {
  if (!m.key.assign(key_id_.c_str())) return internal_err("key id too long");
  m.sig.assign("");
  char buf[4096];
  std::size_t n = proto::canonical_manifest(m, buf, sizeof buf);
  if (n == 0) return internal_err("canonical_manifest: buffer too small or bad manifest");
  auto sig = sign_hex(buf, n);
  if (!sig) return sig.context("sign manifest");
  if (!m.sig.assign(sig->c_str())) return internal_err("signature too long");
  return {};
}

bool verify_hex(EVP_PKEY* key, const void* data, std::size_t len, const std::string& sig_hex) {
  if (sig_hex.size() != 128) return false;
  unsigned char raw[64];
  for (std::size_t i = 0; i < 64; ++i) {
    int hi = hexval(sig_hex[2 * i]), lo = hexval(sig_hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    raw[i] = static_cast<unsigned char>(hi * 16 + lo);
  }
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(raw, 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig, r, s) != 1) {
    ECDSA_SIG_free(sig);
    BN_free(r);
    BN_free(s);
    return false;
  }
  unsigned char* der = nullptr;
  int dlen = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (dlen <= 0) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, key) == 1 &&
            EVP_DigestVerify(ctx, der, static_cast<std::size_t>(dlen),
                             static_cast<const unsigned char*>(data), len) == 1;
  EVP_MD_CTX_free(ctx);
  OPENSSL_free(der);
  ERR_clear_error();
  return ok;
}

Status Signer::sign_release(proto::Manifest& m) const {
  if (!m.release_key.assign(key_id_.c_str())) return internal_err("key id too long");
  m.release_sig.assign("");
  char buf[2048];
  std::size_t n = proto::canonical_release(m, buf, sizeof buf);
  if (n == 0) return internal_err("canonical_release: buffer too small or bad release");
  auto sig = sign_hex(buf, n);
  if (!sig) return sig.context("sign release");
  if (!m.release_sig.assign(sig->c_str())) return internal_err("signature too long");
  return {};
}

Status Signer::sign_keyset(proto::KeySet& k) const {
  if (!k.key.assign(key_id_.c_str())) return internal_err("key id too long");
  k.sig.assign("");
  char buf[4096];
  std::size_t n = proto::canonical_keyset(k, buf, sizeof buf);
  if (n == 0) return internal_err("canonical_keyset: buffer too small or bad key set");
  auto sig = sign_hex(buf, n);
  if (!sig) return sig.context("sign key set");
  if (!k.sig.assign(sig->c_str())) return internal_err("signature too long");
  return {};
}

bool verify_release(EVP_PKEY* key, const proto::Manifest& m) {
  char buf[2048];
  std::size_t n = proto::canonical_release(m, buf, sizeof buf);
  if (n == 0) return false;
  return verify_hex(key, buf, n, m.release_sig.c_str());
}

bool verify_keyset(EVP_PKEY* key, const proto::KeySet& k) {
  char buf[4096];
  std::size_t n = proto::canonical_keyset(k, buf, sizeof buf);
  if (n == 0) return false;
  return verify_hex(key, buf, n, k.sig.c_str());
}

Result<P256Point> p256_point_of(EVP_PKEY* key) {
  Status p = check_p256(key);
  if (!p) return p.err();
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(key, &der);
  if (n <= 0) return internal_err("i2d_PUBKEY: " + ssl_err());
  // The 91-byte SubjectPublicKeyInfo ends with the uncompressed point (a compressed one makes
  // it 59 bytes long).
  P256Point pt{};
  const bool ok = n == static_cast<int>(proto::kP256SpkiDerLen) &&
                  der[proto::kP256SpkiDerLen - proto::kP256PointLen] == 0x04;
  if (ok) std::memcpy(pt.data(), der + (proto::kP256SpkiDerLen - proto::kP256PointLen), pt.size());
  OPENSSL_free(der);
  if (!ok) return invalid_err("the public key is not an uncompressed P-256 point");
  return pt;
}

Result<PkeyPtr> public_key_from_point(const P256Point& point) {
  std::uint8_t der[proto::kP256SpkiDerLen];
  proto::p256_spki_der(point.data(), der);
  const unsigned char* p = der;
  EVP_PKEY* k = d2i_PUBKEY(nullptr, &p, static_cast<long>(sizeof der));
  if (!k) {
    ERR_clear_error();
    return invalid_err("not a point on P-256");
  }
  return PkeyPtr(k);
}

std::string key_id_of_point(const P256Point& point) {
  std::uint8_t der[proto::kP256SpkiDerLen];
  proto::p256_spki_der(point.data(), der);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(der, sizeof der, md);
  return to_hex(md, proto::kKeyIdLen / 2);
}

Status check_keyset_ids(const proto::KeySet& k) {
  for (std::size_t i = 0; i < k.key_count; ++i) {
    P256Point pt{};
    std::memcpy(pt.data(), k.keys[i].pub, pt.size());
    const std::string id = key_id_of_point(pt);
    if (k.keys[i].id != id.c_str())
      return invalid_err("keys[" + std::to_string(i) + "]: id " + k.keys[i].id.c_str() +
                         " is not the id of its public key (" + id + ")");
    auto key = public_key_from_point(pt);
    if (!key) return invalid_err("keys[" + std::to_string(i) + "] (" + id + "): " + key.error());
  }
  return {};
}

std::string hex_of(const void* data, std::size_t len) {
  return to_hex(static_cast<const unsigned char*>(data), len);
}

namespace {
std::string mode_text(unsigned mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}
}  // namespace

Status check_private_key_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return invalid_err(what + " " + path + ": " + std::strerror(errno));
  if ((st.st_mode & 077) == 0) return {};
  return invalid_err(what + " " + path + " has mode " + mode_text(st.st_mode) +
                     ": group or others may read this private key; run `chmod 600 " + path +
                     "` (it must be readable by its owner only)");
}

Result<std::string> read_file_text(const std::string& path, const std::string& what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return invalid_err(what + " " + path + ": " + std::strerror(errno));
  std::string out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) return invalid_err(what + " " + path + ": read error");
  return out;
}

Result<PkeyPtr> load_public_key_file(const std::string& path, const std::string& what) {
  auto pem = read_file_text(path, what);
  if (!pem) return pem.err();
  auto k = public_key_from_pem(*pem);
  if (!k)
    return invalid_err(what + " " + path + ": " + k.error() +
                       " (make one from a private key with `openssl ec -in KEY.pem -pubout -out "
                       "KEY.pub.pem`)");
  Status p = check_p256(k->get());
  if (!p) return p.context(what + " " + path);
  return k;
}

bool verify_manifest(EVP_PKEY* key, const proto::Manifest& m) {
  char buf[4096];
  std::size_t n = proto::canonical_manifest(m, buf, sizeof buf);
  if (n == 0) return false;
  return verify_hex(key, buf, n, m.sig.c_str());
}

Result<PkeyPtr> public_key_from_pem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  if (!bio) return internal_err("BIO_new_mem_buf failed");
  EVP_PKEY* k = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (!k) return invalid_err("not a PEM public key: " + ssl_err());
  return PkeyPtr(k);
}

}  // namespace ota::service
