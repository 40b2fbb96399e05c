//! Who may hold a connection on the node's port before proving who it is.
//!
//! A TCP connection is *unauthenticated* from accept until its service has finished the TLS
//! handshake (and, for mutual TLS, checked the peer's certificate). Strangers can open as
//! many of those as they like, so they are bounded apart from the sessions of members:
//!
//! - at most [`Limits::per_ip`] unauthenticated connections from one IP address that is
//!   not a member's (1,000 half-open connections from one host hold at most that many); a
//!   member's address is bounded by the pools below only, since several nodes may share one
//!   (a lab on one machine, nodes behind one NAT);
//! - at most [`Limits::general`] unauthenticated connections in all, from anyone;
//! - [`Limits::reserved`] more, taken only by the IP addresses of known members (the node
//!   tells the port who they are, [`Admission::set_members`]), so strangers on many
//!   addresses cannot keep members from reconnecting;
//! - a connection that authenticates gives its [`Ticket`] back and takes a *session* slot
//!   (the port's `max_connections`), which strangers therefore never hold.
//!
//! Pure bookkeeping behind one mutex: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// The bounds on unauthenticated connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From one IP address.
    pub per_ip: usize,
    /// In all, for anyone.
    pub general: usize,
    /// In all on top of `general`, only for members' addresses.
    pub reserved: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { per_ip: 16, general: 64, reserved: 32 }
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address already holds [`Limits::per_ip`] unauthenticated connections.
    PerIp,
    /// Every slot it may use is taken.
    Full,
}

#[derive(Debug, Default)]
struct Table {
    per_ip: BTreeMap<IpAddr, usize>,
    general: usize,
    reserved: usize,
    members: BTreeSet<IpAddr>,
}

/// The shared table of unauthenticated connections.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    table: Arc<Mutex<Table>>,
}

/// One unauthenticated connection's place; dropping it (when the connection authenticates
/// or ends) frees the place.
#[derive(Debug)]
pub struct Ticket {
    ip: IpAddr,
    reserved: bool,
    table: Arc<Mutex<Table>>,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self { limits, table: Arc::default() }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The addresses the reserved slots are for (replaces the previous set).
    pub fn set_members(&self, members: impl IntoIterator<Item = IpAddr>) {
        self.lock().members = members.into_iter().collect();
    }

    /// A place for a new connection from `ip`, or why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        let mut t = self.lock();
        let member = t.members.contains(&ip);
        if !member && t.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.per_ip.max(1) {
            return Err(Refused::PerIp);
        }
        let reserved = if t.general < self.limits.general {
            false
        } else if member && t.reserved < self.limits.reserved {
            true
        } else {
            return Err(Refused::Full);
        };
        if reserved {
            t.reserved += 1;
        } else {
            t.general += 1;
        }
        *t.per_ip.entry(ip).or_default() += 1;
        Ok(Ticket { ip, reserved, table: self.table.clone() })
    }

    /// Unauthenticated connections held now: (general, reserved).
    pub fn held(&self) -> (usize, usize) {
        let t = self.lock();
        (t.general, t.reserved)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if self.reserved {
            t.reserved = t.reserved.saturating_sub(1);
        } else {
            t.general = t.general.saturating_sub(1);
        }
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let a = Admission::new(Limits { per_ip: 3, general: 10, reserved: 2 });
        let held: Vec<Ticket> = (0..3).map(|_| a.admit(ip(1)).expect("within the share")).collect();
        assert_eq!(a.admit(ip(1)).err(), Some(Refused::PerIp));
        assert!(a.admit(ip(2)).is_ok(), "another address is not held up");
        drop(held);
        assert_eq!(a.held(), (0, 0));
        assert!(a.admit(ip(1)).is_ok(), "the share comes back when the connections end");
    }

    #[test]
    fn strangers_on_many_addresses_leave_the_reserved_slots_to_members() {
        let a = Admission::new(Limits { per_ip: 1, general: 4, reserved: 2 });
        a.set_members([ip(200), ip(201), ip(202)]);
        let strangers: Vec<Ticket> = (1..=4).map(|i| a.admit(ip(i)).expect("general")).collect();
        assert_eq!(a.admit(ip(5)).err(), Some(Refused::Full), "a fifth stranger finds no slot");
        let m1 = a.admit(ip(200)).expect("a member takes a reserved slot");
        let _m2 = a.admit(ip(201)).expect("and another member the other one");
        assert_eq!(a.admit(ip(202)).err(), Some(Refused::Full), "the reserved slots are bounded too");
        assert_eq!(a.held(), (4, 2));
        drop(m1);
        assert!(a.admit(ip(202)).is_ok());
        drop(strangers);
        assert_eq!(a.held().0, 0);
    }

    #[test]
    fn a_members_address_is_held_to_the_pools_not_to_one_addresss_share() {
        let a = Admission::new(Limits { per_ip: 2, general: 4, reserved: 1 });
        a.set_members([ip(1)]);
        let held: Vec<Ticket> = (0..5).map(|_| a.admit(ip(1)).expect("general, then reserved")).collect();
        assert_eq!(a.admit(ip(1)).err(), Some(Refused::Full));
        assert_eq!(a.held(), (4, 1));
        drop(held);
    }

    #[test]
    fn a_member_uses_the_general_slots_first_and_a_new_member_set_replaces_the_old() {
        let a = Admission::new(Limits { per_ip: 2, general: 1, reserved: 1 });
        a.set_members([ip(9)]);
        let _first = a.admit(ip(9)).expect("general");
        assert_eq!(a.held(), (1, 0));
        let _second = a.admit(ip(9)).expect("reserved");
        assert_eq!(a.held(), (1, 1));
        a.set_members([ip(8)]);
        assert_eq!(a.admit(ip(7)).err(), Some(Refused::Full));
    }
}
