// Where a webhook may point (docs/security.md, "Webhooks"): http or https, and never at an address
// inside the network (private, loopback, link-local, unique-local, CGNAT, multicast, reserved,
// IPv4-mapped) unless WEBHOOK_ALLOW_PRIVATE=true. Checked when a webhook is made, and again at
// every connection through `guardedLookup`: a name can resolve elsewhere later (DNS rebinding).

import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP, type LookupFunction } from 'node:net';

const blocked = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const) {
  blocked.addSubnet(net, prefix, 'ipv4');
}
for (const [net, prefix] of [
  ['::', 128],
  ['::1', 128],
  // IPv4-translated and 6to4: they reach IPv4 addresses, private ones included.
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['2002::', 16],
  ['100::', 64],
  ['2001:db8::', 32],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const) {
  blocked.addSubnet(net, prefix, 'ipv6');
}

// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are refused whatever IPv4 address they carry. A
// list of their own: BlockList matches IPv4 addresses against this subnet too, as mapped ones.
const mapped = new BlockList();
mapped.addSubnet('::ffff:0:0', 96, 'ipv6');

/** Whether `address` (an IP address) is inside the network, or not an address at all. */
export function isPrivateAddress(address: string): boolean {
  const family = isIP(address);
  if (family === 0) return true;
  if (family === 6 && mapped.check(address, 'ipv6')) return true;
  return blocked.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export class RefusedAddressError extends Error {
  readonly code = 'EWEBHOOKADDRESS';
  constructor(readonly host: string, readonly address: string) {
    super(`${host} resolves to ${address}, an address inside the network`);
    this.name = 'RefusedAddressError';
  }
}

/**
 * A `lookup` for http(s).request that resolves as usual and fails when any address is inside the
 * network, so the check is made on the address the connection will use.
 */
export const guardedLookup: LookupFunction = (hostname, options, callback) => {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses: LookupAddress[]) => {
    if (err !== null) {
      callback(err, '', 0);
      return;
    }
    const refused = addresses.find((a) => isPrivateAddress(a.address));
    if (refused !== undefined) {
      callback(Object.assign(new RefusedAddressError(hostname, refused.address), { errno: 0, syscall: 'lookup' }), '', 0);
      return;
    }
    if (options.all === true) {
      (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, addresses);
      return;
    }
    const [first] = addresses;
    if (first === undefined) {
      callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' }), '', 0);
      return;
    }
    callback(null, first.address, first.family);
  });
};

/** The host part of a URL as Node connects to it: IPv6 literals without their brackets. */
export function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

/**
 * Why a webhook may not point at `url` (null: it may): not http(s), credentials in it, or (unless
 * `allowPrivate`) a host that is, or resolves to, an address inside the network.
 */
export async function refusedUrl(url: URL, allowPrivate: boolean): Promise<string | null> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return 'must be an http or https URL';
  if (url.username !== '' || url.password !== '') return 'must not carry a user name or password';
  if (allowPrivate) return null;
  const host = hostOf(url);
  if (isIP(host) !== 0) return isPrivateAddress(host) ? 'must not point at a private, loopback or link-local address' : null;
  const addresses = await new Promise<LookupAddress[] | null>((resolve) => {
    dnsLookup(host, { all: true }, (err, found) => {
      resolve(err === null ? found : null);
    });
  });
  if (addresses === null || addresses.length === 0) return `must name a host that resolves (${host} does not)`;
  if (addresses.some((a) => isPrivateAddress(a.address))) {
    return 'must not point at a private, loopback or link-local address';
  }
  return null;
}
