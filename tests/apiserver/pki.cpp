#include "pki.h"

#include <memory>
#include <stdexcept>

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace sluice::testing {
namespace {

template <class T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using PKey = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("pki: ") + what);
}

PKey newKey() {
  PKey key(EVP_EC_gen("P-256"));
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

std::string toPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1, "key pem");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string toPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_X509(bio.get(), cert) == 1, "cert pem");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

PKey readKey(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  check(key != nullptr, "read key");
  return key;
}

Cert readCert(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  check(cert != nullptr, "read cert");
  return cert;
}

void addExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  check(ext != nullptr, "extension");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

Cert newCert(EVP_PKEY* key, const std::string& cn, long serial) {
  Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  return cert;
}

}  // namespace

KeyPair makeCa(const std::string& commonName) {
  PKey key = newKey();
  Cert cert = newCert(key.get(), commonName, 1);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  addExt(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE");
  addExt(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  addExt(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
  check(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0, "sign CA");
  return {toPem(cert.get()), toPem(key.get())};
}

KeyPair issueCert(const KeyPair& ca, const std::string& commonName,
                  const std::vector<std::string>& sans, CertUse use) {
  PKey caKey = readKey(ca.keyPem);
  Cert caCert = readCert(ca.certPem);
  static long serial = 100;
  PKey key = newKey();
  Cert cert = newCert(key.get(), commonName, ++serial);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(caCert.get()));
  addExt(cert.get(), caCert.get(), NID_basic_constraints, "critical,CA:FALSE");
  addExt(cert.get(), caCert.get(), NID_ext_key_usage,
         use == CertUse::kServer ? "serverAuth" : use == CertUse::kClient ? "clientAuth" : "serverAuth,clientAuth");
  if (!sans.empty()) {
    std::string list;
    for (const auto& s : sans) list += (list.empty() ? "" : ",") + s;
    addExt(cert.get(), caCert.get(), NID_subject_alt_name, list);
  }
  check(X509_sign(cert.get(), caKey.get(), EVP_sha256()) > 0, "sign leaf");
  return {toPem(cert.get()), toPem(key.get())};
}

}  // namespace sluice::testing
