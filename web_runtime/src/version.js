// The runtime's version, the same as package.json's (a test keeps them equal). The page's clearcut.js and the
// worker compare theirs: an app that bundles clearcut.js from npm talks to the worker of the bundle at its
// baseUrl, and the two must speak the same messages.
export const VERSION = '0.1.0';
