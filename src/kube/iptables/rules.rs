//! The rule set as data: a pure function from settings (and what the
//! `nat` table already holds) to the commands that make it right.

use super::{
    CaptureConfig, PortRange, CHAIN_INBOUND, CHAIN_IN_REDIRECT, CHAIN_OUTBOUND, CHAIN_REDIRECT,
};
use std::collections::HashSet;
use std::fmt;

/// An address family and the tool that configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(addr: std::net::IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

/// One command: the program is given by the family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesCommand {
    pub family: Family,
    pub args: Vec<String>,
}

impl fmt::Display for IptablesCommand {
    /// Shell-ready: arguments that need it are single-quoted (none of ours
    /// do today; `!` is left bare as iptables documents it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.family.program())?;
        for a in &self.args {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:,!=".contains(&b));
            if plain {
                write!(f, " {a}")?;
            } else {
                write!(f, " '{}'", a.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// What the `nat` table holds before we start, as printed by
/// `iptables -t nat -S`: chain names and rules, verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {
    chains: HashSet<String>,
    rules: HashSet<String>,
}

impl NatState {
    /// A namespace nobody has touched: what `--dry-run` assumes.
    pub fn fresh() -> Self {
        NatState::default()
    }

    /// Reads `iptables -t nat -S` output (`-P`, `-N` and `-A` lines).
    pub fn parse(text: &str) -> Self {
        let mut state = NatState::default();
        for line in text.lines().map(str::trim) {
            if let Some(chain) = line.strip_prefix("-N ") {
                state.chains.insert(chain.trim().to_owned());
            } else if line.starts_with("-A ") {
                state.rules.insert(line.to_owned());
            }
        }
        state
    }
}

fn cmd(family: Family, args: &[&str]) -> IptablesCommand {
    let mut all = vec!["-t".to_owned(), "nat".to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    IptablesCommand { family, args: all }
}

/// The commands that leave the `nat` table of one family capturing as
/// `config` says, given what it holds now. Running them twice gives the
/// same table: our chains are flushed (or created), refilled, and the
/// jumps from the built-in chains are added only when missing.
pub fn plan(config: &CaptureConfig, family: Family, state: &NatState) -> Vec<IptablesCommand> {
    let mut out = Vec::new();
    prepare_chains(&mut out, family, state);
    inbound_rules(&mut out, config, family);
    outbound_rules(&mut out, config, family);
    outbound_exclusions(&mut out, config, family);
    hook_chains(&mut out, family, state);
    out
}

/// Chains first, in dependency order, so every jump target exists before
/// a rule names it: ours are flushed when present, created otherwise.
fn prepare_chains(out: &mut Vec<IptablesCommand>, family: Family, state: &NatState) {
    for chain in [
        CHAIN_IN_REDIRECT,
        CHAIN_REDIRECT,
        CHAIN_INBOUND,
        CHAIN_OUTBOUND,
    ] {
        let op = if state.chains.contains(chain) {
            "-F"
        } else {
            "-N"
        };
        out.push(cmd(family, &[op, chain]));
    }
}

/// Inbound: everything arriving over TCP goes to the mTLS listener, except
/// ports that must stay reachable without it.
fn inbound_rules(out: &mut Vec<IptablesCommand>, config: &CaptureConfig, family: Family) {
    out.push(redirect_to(family, CHAIN_IN_REDIRECT, config.inbound_port));
    return_for_ports(out, family, CHAIN_INBOUND, &config.inbound_exclusions());
    out.push(cmd(
        family,
        &["-A", CHAIN_INBOUND, "-p", "tcp", "-j", CHAIN_IN_REDIRECT],
    ));
}

/// Outbound, up to the user's exclusions: the redirect target, and the
/// rules that keep the proxy's own and the pod's loopback traffic out.
fn outbound_rules(out: &mut Vec<IptablesCommand>, config: &CaptureConfig, family: Family) {
    let uid = config.proxy_uid.to_string();
    out.push(redirect_to(family, CHAIN_REDIRECT, config.outbound_port));
    // The proxy dialling this pod's own IP (a Service that resolves to
    // itself) leaves through `lo` and would reach the app port in the
    // clear, around inbound policy. Send it through the inbound chain, as
    // Istio does, so it lands on the mTLS listener like any other peer.
    let lo_dst = family.loopback();
    out.push(cmd(
        family,
        &[
            "-A",
            CHAIN_OUTBOUND,
            "-o",
            "lo",
            "!",
            "-d",
            lo_dst,
            "-p",
            "tcp",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            CHAIN_INBOUND,
        ],
    ));
    // The proxy's own connections (to peers, and to the app on loopback)
    // must never loop back into it.
    out.push(cmd(
        family,
        &[
            "-A",
            CHAIN_OUTBOUND,
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ],
    ));
    // Anything else on loopback stays inside the pod: the app talking to
    // itself or to a sidecar port. This includes the app calling its own
    // pod IP, which the kernel routes over `lo`.
    out.push(cmd(
        family,
        &["-A", CHAIN_OUTBOUND, "-o", "lo", "-j", "RETURN"],
    ));
}

/// The user's outbound exclusions (ports, then the CIDRs of this family),
/// before the final redirect, or they would be dead rules.
fn outbound_exclusions(out: &mut Vec<IptablesCommand>, config: &CaptureConfig, family: Family) {
    return_for_ports(out, family, CHAIN_OUTBOUND, &config.exclude_outbound_ports);
    for cidr in config
        .exclude_outbound_cidrs
        .iter()
        .filter(|c| Family::of(c.addr) == family)
    {
        let dst = cidr.to_string();
        out.push(cmd(
            family,
            &["-A", CHAIN_OUTBOUND, "-d", &dst, "-j", "RETURN"],
        ));
    }
    out.push(cmd(
        family,
        &["-A", CHAIN_OUTBOUND, "-p", "tcp", "-j", CHAIN_REDIRECT],
    ));
}

/// The rule of a redirect chain: every TCP connection it sees goes to
/// one of the proxy's listeners.
fn redirect_to(family: Family, chain: &str, port: u16) -> IptablesCommand {
    let port = port.to_string();
    cmd(
        family,
        &[
            "-A",
            chain,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ],
    )
}

/// One `RETURN` rule in `chain` for each TCP port range: traffic to them
/// leaves the chain uncaptured.
fn return_for_ports(
    out: &mut Vec<IptablesCommand>,
    family: Family,
    chain: &str,
    ranges: &[PortRange],
) {
    for range in ranges {
        let dport = range.iptables_arg();
        out.push(cmd(
            family,
            &["-A", chain, "-p", "tcp", "--dport", &dport, "-j", "RETURN"],
        ));
    }
}

/// Hook our chains in last, once they are complete, and only once.
fn hook_chains(out: &mut Vec<IptablesCommand>, family: Family, state: &NatState) {
    for (builtin, chain) in [("PREROUTING", CHAIN_INBOUND), ("OUTPUT", CHAIN_OUTBOUND)] {
        let rule = format!("-A {builtin} -p tcp -j {chain}");
        if !state.rules.contains(&rule) {
            out.push(cmd(family, &["-A", builtin, "-p", "tcp", "-j", chain]));
        }
    }
}
