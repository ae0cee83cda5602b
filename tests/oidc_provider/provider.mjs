// A real OpenID Provider (the `oidc-provider` package) for the test suite, on plain http on loopback.
//
// Usage: node provider.mjs CONFIG.json   (or the same JSON in the OIDC_PROVIDER_CONFIG variable)
// {
//   "host": "127.0.0.1", "port": 0,
//   "client": {"client_id": "...", "client_secret": "...", "redirect_uris": ["..."],
//              "token_endpoint_auth_method": "client_secret_basic"},
//   "accounts": [{"sub": "...", "username": "...", "password": "...", "name": "...",
//                 "email": "...", "groups": ["..."]}],
//   "exit_on_stdin_close": true
// }
// Prints one line, `READY <issuer>`, on stdout once listening; everything else goes to stderr.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { Provider } from 'oidc-provider';

// oidc-provider prints notices with console.info; stdout is kept for the READY line alone so the
// test suite can read it and then leave the pipe undrained.
console.info = console.error;
console.log = console.error;

const config = JSON.parse(
  process.argv[2] ? readFileSync(process.argv[2], 'utf8') : process.env.OIDC_PROVIDER_CONFIG ?? '',
);
const host = config.host ?? '127.0.0.1';
const accounts = config.accounts.map((account) => ({ sub: account.username, groups: [], ...account }));

if (config.exit_on_stdin_close) {
  // The suite holds our stdin open; if it dies without stopping us, don't outlive it.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html><html><head><title>${escapeHtml(title)}</title></head>`
    + `<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`);
}

function loginPage(res, uid, { username = '', error } = {}) {
  const alert = error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : '';
  page(res, 200, 'Sign in', `${alert}
<form method="post" action="/interaction/${uid}/login">
  <input type="text" name="username" value="${escapeHtml(username)}" required>
  <input type="password" name="password" required>
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(res, uid, details, clientId) {
  const scopes = (details.missingOIDCScope ?? []).map((s) => `<li>${escapeHtml(s)}</li>`).join('');
  page(res, 200, 'Authorize', `<p>${escapeHtml(clientId)} asks for:</p><ul>${scopes}</ul>
<form method="post" action="/interaction/${uid}/consent">
  <button type="submit">Allow</button>
</form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The development interactions that ship with oidc-provider sign in any login with any password, so
// the login and consent steps are these routes instead, which check the configured accounts.
async function interaction(provider, req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    page(res, 400, 'Bad request', '<p>Interaction does not match its cookie.</p>');
    return;
  }
  const { prompt, params, session, grantId } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') loginPage(res, uid);
    else consentPage(res, uid, prompt.details, params.client_id);
    return;
  }
  if (req.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const account = accounts.find((a) => a.username === form.get('username'));
    if (!account || account.password !== form.get('password')) {
      loginPage(res, uid, { username: form.get('username') ?? '', error: 'Invalid username or password.' });
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: account.sub } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  if (req.method === 'POST' && action === 'consent' && prompt.name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  page(res, 400, 'Bad request', `<p>Unexpected ${escapeHtml(req.method)} for prompt ${escapeHtml(prompt.name)}.</p>`);
}

function configuration() {
  // A fresh signing key per run: the dev keystore oidc-provider falls back to is public knowledge.
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    clients: [{
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...config.client,
    }],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // Every client must send an S256 code_challenge (oidc-provider 9 supports no other method).
    pkce: { required: () => true },
    // Authorization code flow only: no implicit or hybrid responses for a sign-in to fall back to.
    responseTypes: ['code'],
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    // By default claims of the requested scopes go to the userinfo endpoint only, not into the
    // id_token when an access token is issued too; a sign-in reads them from the id_token.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
    },
    async findAccount(_ctx, sub) {
      const account = accounts.find((a) => a.sub === sub);
      if (!account) return undefined;
      return {
        accountId: account.sub,
        async claims() {
          return {
            sub: account.sub,
            name: account.name ?? account.username,
            preferred_username: account.username,
            email: account.email,
            email_verified: true,
            groups: account.groups,
          };
        },
      };
    },
  };
}

const server = createServer();
server.listen(config.port ?? 0, host, () => {
  // The issuer names the port, which is only known once listening when port 0 was asked for.
  const issuer = `http://${host}:${server.address().port}`;
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const match = /^\/interaction\/([\w-]+)(?:\/(login|consent))?$/.exec(new URL(req.url, issuer).pathname);
    if (!match) {
      callback(req, res);
      return;
    }
    interaction(provider, req, res, match[1], match[2]).catch((error) => {
      console.error('interaction failed', error);
      if (!res.headersSent) page(res, 400, 'Interaction failed', `<p>${escapeHtml(error.message)}</p>`);
    });
  });
  process.stdout.write(`READY ${issuer}\n`);
});
process.on('SIGTERM', () => process.exit(0));
