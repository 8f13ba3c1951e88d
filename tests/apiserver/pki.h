// pki.h — throw-away certificates for TLS tests, made with OpenSSL's APIs (EC P-256).
#pragma once

#include <string>
#include <vector>

namespace sluice::testing {

struct KeyPair {
  std::string certPem;
  std::string keyPem;
};

// A self-signed CA.
KeyPair makeCa(const std::string& commonName);
// What a leaf certificate may be used for (extendedKeyUsage). A server that also dials itself
// or its peers with its own certificate (etcd's gateway with --client-cert-auth) needs both.
enum class CertUse { kServer, kClient, kServerAndClient };

// A leaf certificate signed by `ca`. `sans` are "DNS:name" or "IP:addr" entries.
KeyPair issueCert(const KeyPair& ca, const std::string& commonName,
                  const std::vector<std::string>& sans, CertUse use = CertUse::kServer);

}  // namespace sluice::testing
