//! The address guard of egress: which addresses an app may never reach
//! through meshguard, whatever name led there (SSRF, cloud metadata theft,
//! pivoting into the pod's own network). Pure: it looks at one address,
//! the one about to be connected to, after DNS resolution.
//!
//! IPv6 forms that carry an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`)
//! are judged by the IPv4 address inside them: `::ffff:127.0.0.1` is
//! loopback and `64:ff9b::a9fe:a9fe` is the metadata address. Tunnel and
//! translation prefixes whose embedded address is not recoverable (Teredo,
//! the local-use NAT64 prefix) are refused as a whole.

use crate::sidecar::net::Cidr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused; `label` is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// A cloud provider's instance metadata or host agent endpoint.
    Metadata,
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT, also used inside clouds).
    SharedAddressSpace,
    /// fc00::/7.
    UniqueLocal,
    /// 0.0.0.0/8, `::`.
    Unspecified,
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Not a unicast destination on the internet: IETF protocol
    /// assignments, documentation, benchmarking, 240/4, Teredo, local NAT64,
    /// site-local, discard-only.
    Reserved,
    /// One of the pod's own addresses.
    OwnAddress,
}

impl Blocked {
    pub fn label(self) -> &'static str {
        match self {
            Blocked::Metadata => "metadata",
            Blocked::Loopback => "loopback",
            Blocked::LinkLocal => "link_local",
            Blocked::Private => "private",
            Blocked::SharedAddressSpace => "shared_address_space",
            Blocked::UniqueLocal => "unique_local",
            Blocked::Unspecified => "unspecified",
            Blocked::Multicast => "multicast",
            Blocked::Broadcast => "broadcast",
            Blocked::Reserved => "reserved",
            Blocked::OwnAddress => "own_address",
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Blocked::Metadata => "a cloud metadata address",
            Blocked::Loopback => "a loopback address",
            Blocked::LinkLocal => "a link-local address",
            Blocked::Private => "a private address",
            Blocked::SharedAddressSpace => "a shared (CGNAT) address",
            Blocked::UniqueLocal => "a unique-local address",
            Blocked::Unspecified => "the unspecified address",
            Blocked::Multicast => "a multicast address",
            Blocked::Broadcast => "the broadcast address",
            Blocked::Reserved => "a reserved address",
            Blocked::OwnAddress => "one of the pod's own addresses",
        };
        f.write_str(text)
    }
}

/// Cloud metadata and host agent endpoints (IPv4): AWS, GCP, Azure,
/// OpenStack, DigitalOcean (169.254.169.254), AWS NTP and DNS
/// (169.254.169.123, 169.254.169.253), ECS task metadata (169.254.170.2),
/// Alibaba (100.100.100.200), Oracle (192.0.0.192), Azure WireServer
/// (168.63.129.16, a public address, so only this list catches it).
pub const METADATA_V4: [Ipv4Addr; 7] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 169, 123),
    Ipv4Addr::new(169, 254, 169, 253),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// Cloud metadata endpoints (IPv6): AWS IMDS and its DNS/NTP.
pub const METADATA_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x23),
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x123),
];

/// The IPv4 address an IPv6 address carries, for the forms whose
/// traffic ends at that IPv4 address.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // IPv4-compatible ::a.b.c.d (deprecated), but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(low),
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        // 6to4 2002:AABB:CCDD::/48 (RFC 3056).
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// The address as the guard judges it: an IPv6 form carrying an IPv4
/// address becomes that address.
pub fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What is wrong with reaching `ip` at all, by its kind alone (no
/// allowlist, no own addresses); `None` for an ordinary public address.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match effective(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    if METADATA_V4.contains(&ip) {
        return Some(Blocked::Metadata);
    }
    let table: [([u8; 4], u8, Blocked); 16] = [
        ([0, 0, 0, 0], 8, Blocked::Unspecified),
        ([127, 0, 0, 0], 8, Blocked::Loopback),
        ([169, 254, 0, 0], 16, Blocked::LinkLocal),
        ([10, 0, 0, 0], 8, Blocked::Private),
        ([172, 16, 0, 0], 12, Blocked::Private),
        ([192, 168, 0, 0], 16, Blocked::Private),
        ([100, 64, 0, 0], 10, Blocked::SharedAddressSpace),
        ([255, 255, 255, 255], 32, Blocked::Broadcast),
        ([224, 0, 0, 0], 4, Blocked::Multicast),
        ([240, 0, 0, 0], 4, Blocked::Reserved),
        ([192, 0, 0, 0], 24, Blocked::Reserved),
        ([192, 0, 2, 0], 24, Blocked::Reserved),
        ([198, 51, 100, 0], 24, Blocked::Reserved),
        ([203, 0, 113, 0], 24, Blocked::Reserved),
        ([198, 18, 0, 0], 15, Blocked::Reserved),
        ([192, 88, 99, 0], 24, Blocked::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: u128, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == net & mask
}

fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if METADATA_V6.contains(&ip) {
        return Some(Blocked::Metadata);
    }
    let table: [(u128, u8, Blocked); 11] = [
        (0, 128, Blocked::Unspecified),
        (1, 128, Blocked::Loopback),
        (0xfe80 << 112, 10, Blocked::LinkLocal),
        (0xfc00 << 112, 7, Blocked::UniqueLocal),
        (0xff00 << 112, 8, Blocked::Multicast),
        // Deprecated site-local (RFC 3879), still routed by some stacks.
        (0xfec0 << 112, 10, Blocked::Reserved),
        // Teredo: the client address inside is obfuscated; refused whole.
        (0x2001_0000 << 96, 32, Blocked::Reserved),
        // Local-use NAT64 (RFC 8215): the embedding depends on the prefix.
        (0x0064_ff9b_0001 << 80, 48, Blocked::Reserved),
        // Documentation and discard-only.
        (0x2001_0db8 << 96, 32, Blocked::Reserved),
        (0x0100 << 112, 64, Blocked::Reserved),
        // The rest of ::/96 (IPv4-compatible ones were unwrapped above).
        (0, 96, Blocked::Reserved),
    ];
    table
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

/// The guard of one sidecar: refuses what [`classify`] refuses and the
/// pod's own addresses, except inside the CIDRs the operator allowed.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<Cidr>,
    own: Vec<IpAddr>,
}

impl Guard {
    pub fn new(allow: Vec<Cidr>, own: Vec<IpAddr>) -> Guard {
        let own = own.into_iter().map(effective).collect();
        Guard { allow, own }
    }

    /// Whether an allowed CIDR covers `ip` (as written, or the IPv4
    /// address it carries).
    pub fn allowed_by(&self, ip: IpAddr) -> Option<&Cidr> {
        let eff = effective(ip);
        self.allow
            .iter()
            .find(|c| c.contains(ip) || c.contains(eff))
    }

    /// Decides one address about to be connected to. `app` is the address
    /// the app's connection came from (one of the pod's own under capture).
    pub fn check(&self, ip: IpAddr, app: Option<IpAddr>) -> Result<(), Blocked> {
        if self.allowed_by(ip).is_some() {
            return Ok(());
        }
        if let Some(why) = classify(ip) {
            return Err(why);
        }
        let eff = effective(ip);
        if self.own.contains(&eff) || app.map(effective) == Some(eff) {
            return Err(Blocked::OwnAddress);
        }
        Ok(())
    }
}

/// The metadata address a CIDR covers, if it covers one but is not just
/// that address: such a CIDR is refused in config, so that allowing a
/// range (`10.0.0.0/8`, `0.0.0.0/0`) never opens metadata by accident.
pub fn metadata_inside(cidr: &Cidr) -> Option<IpAddr> {
    let single = match cidr.addr {
        IpAddr::V4(_) => cidr.prefix == 32,
        IpAddr::V6(_) => cidr.prefix == 128,
    };
    if single {
        return None;
    }
    let v4 = METADATA_V4.iter().copied().map(IpAddr::V4);
    let v6 = METADATA_V6.iter().copied().map(IpAddr::V6);
    v4.chain(v6).find(|m| cidr.contains(*m))
}

#[cfg(test)]
mod tests;
