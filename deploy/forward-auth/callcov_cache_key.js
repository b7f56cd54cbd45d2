// The cache key of a forward-auth decision in nginx-cached.conf: SHA-256 of the
// credential and the original request, so no API key or JWT is ever written into
// nginx's cache keys or cache files (each file starts with its key in clear).
// Loaded with js_import; needs njs (Debian: libnginx-mod-http-js).
function decisionKey(r) {
    const hash = require('crypto').createHash('sha256');
    // Every value is length-prefixed: no two different requests give the same input.
    // (njs 0.7, Debian 12's, has no for...of.)
    [
        r.headersIn['X-API-Key'] || '',
        r.headersIn['Authorization'] || '',
        r.variables.request_method,
        r.variables.request_uri,
    ].forEach(function (part) {
        hash.update(part.length + ':' + part + ';');
    });
    return hash.digest('hex');
}

export default { decisionKey };
