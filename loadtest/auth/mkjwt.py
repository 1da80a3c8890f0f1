"""Makes what loadtest/auth/bench.sh needs, in the current directory: an
RS256 key (openssl), its JWKS, a JWT for it, a static token, and Warren
configurations with auth off, on with the token, on with the JWKS."""
import os
import base64, json, subprocess, time, hashlib
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b'=').decode()
mod = subprocess.check_output(['openssl','rsa','-in','key.pem','-noout','-modulus']).decode().strip().split('=')[1]
n = bytes.fromhex(mod)
jwks = {"keys":[{"kty":"RSA","kid":"bench","alg":"RS256","use":"sig","n":b64(n),"e":"AQAB"}]}
open('jwks.json','w').write(json.dumps(jwks))
header = b64(json.dumps({"alg":"RS256","typ":"JWT","kid":"bench"}).encode())
payload = b64(json.dumps({"sub":"bench","iss":"https://issuer.bench","aud":"warren","exp":int(time.time())+86400,
  "warren":{"publish":["*"],"consume":["*"],"call":["*"]}}).encode())
signing = (header+'.'+payload).encode()
sig = subprocess.run(['openssl','dgst','-sha256','-sign','key.pem'], input=signing, capture_output=True).stdout
open('jwt.txt','w').write(header+'.'+payload+'.'+b64(sig))
token = 'bench-static-token-0123456789abcdef'
open('token.txt','w').write(token)
h = hashlib.sha256(token.encode()).hexdigest()
open('auth-token.toml','w').write(f'''[auth]
enabled = true
[[auth.clients]]
name = "bench"
token_sha256 = "{h}"
publish = ["*"]
consume = ["*"]
call = ["*"]
''')
open('auth-jwt.toml','w').write(f'''[auth]
enabled = true
[auth.jwt]
jwks_file = "{os.path.abspath('jwks.json')}"
issuer = "https://issuer.bench"
audience = "warren"
''')
open('auth-off.toml','w').write('')
