#!/usr/bin/env bash
# Makes a development PKI with openssl: a CA, a server certificate for localhost and
# 127.0.0.1, and a client certificate for mTLS. For development and tests only: never
# commit the keys it writes (certs/dev/ is ignored by git).
#
#   certs/make-dev-certs.sh [OUT_DIR]      # default: certs/dev
set -euo pipefail
out=${1:-"$(dirname "${BASH_SOURCE[0]}")/dev"}
mkdir -p "$out"
cd "$out"
days=${DAYS:-365}

# CA
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -subj "/CN=hookgate dev CA" -keyout ca.key -out ca.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# Server: localhost and 127.0.0.1 (an EC key in SEC1 form, to show that form loads too)
openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -sha256 -extfile server.ext -out server.crt 2>/dev/null

# Client (mTLS): a PKCS#8 RSA key
openssl req -new -newkey rsa:2048 -nodes -keyout client.key -subj "/CN=hookgate dev client" -out client.csr 2>/dev/null
cat > client.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
  -sha256 -extfile client.ext -out client.crt 2>/dev/null

rm -f ./*.csr ./*.ext ./*.srl
chmod 600 ./*.key
echo "wrote $(pwd): ca.crt ca.key server.crt server.key client.crt client.key"
