// The cache key of a forward-auth decision in nginx-cached.conf: SHA-256 of the
// credential and the original request, so no API key or JWT is ever written into
// nginx's cache keys or cache files (each file starts with its key in clear).
// Loaded with js_import; needs njs (Debian: libnginx-mod-http-js).
function decisionKey(r) {
    var headers = r.headersIn;
    var key = headers['X-API-Key'] || '';
    var authorization = headers['Authorization'] || '';
    var method = r.variables.request_method;
    var uri = r.variables.request_uri;
    // Every value is length-prefixed: no two different requests give the same input.
    // One string, one update: njs runs this on every request, so it makes the fewest
    // calls (a forEach over the parts, four updates, cost measurably more).
    return require('crypto').createHash('sha256').update(
        key.length + ':' + key + ';' +
        authorization.length + ':' + authorization + ';' +
        method.length + ':' + method + ';' +
        uri.length + ':' + uri + ';'
    ).digest('hex');
}

export default { decisionKey };
