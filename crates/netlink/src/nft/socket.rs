//! The NETLINK_NETFILTER socket batches are sent over.
//!
//! Synchronous by design: the kernel processes a whole batch inside the `sendmsg` call
//! (nfnetlink runs in the sender's context), so by the time `send` returns every
//! acknowledgement is already queued on the socket and there is nothing to wait for.
//! Async callers run [`NftSocket::apply`] on a blocking thread (a batch of ten thousand
//! rules takes ~140 ms, BENCHMARKS.md) or on a [`netns::run_in`] thread.

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};

use std::time::Duration;

use super::batch::Batch;
use super::objects::{Family, Verdict};
use super::set::{ElementData, MapData, Set, SetElement, decode_data};
use super::wire::{
    self, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, Writer, attr, msg,
};
use crate::{Error, Result, netns};

/// recv(2) flag: return EAGAIN instead of blocking.
const MSG_DONTWAIT: i32 = 0x40;
/// Receive-buffer space to reserve per acknowledgement: a small skb's true size.
const ACK_TRUESIZE: usize = 1024;

/// How many times a dump the ruleset changed under is started again.
const DUMP_ATTEMPTS: usize = 5;

/// A rule as [`NftSocket::rules`] lists it: where it is and its handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListedRule {
    /// Its chain.
    pub chain: String,
    /// Its handle, unique in the table; a rule added again gets a new one.
    pub handle: u64,
}

/// A socket speaking nf_tables, bound in the network namespace it was created in.
#[derive(Debug)]
pub struct NftSocket {
    socket: Socket,
    seq: u32,
}

impl NftSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::sys("opening NETLINK_NETFILTER socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| Error::sys("binding NETLINK_NETFILTER socket", e))?;
        // Errors echo only the failed message's header, and carry the kernel's text.
        socket
            .set_cap_ack(true)
            .map_err(|e| Error::sys("setting NETLINK_CAP_ACK", e))?;
        socket
            .set_ext_ack(true)
            .map_err(|e| Error::sys("setting NETLINK_EXT_ACK", e))?;
        Ok(NftSocket { socket, seq: 0 })
    }

    /// Opens a socket inside the named namespace; it keeps talking to that namespace's
    /// nf_tables whichever thread uses it later.
    pub fn new_in(netns_name: &str) -> Result<Self> {
        netns::run_in(netns_name, NftSocket::new)?
    }

    /// Opens a socket inside the namespace at `path` (e.g. a container's
    /// `/proc/PID/ns/net` or a runtime's bind mount).
    pub fn new_in_path(path: &std::path::Path) -> Result<Self> {
        netns::run_in_path(path, NftSocket::new)?
    }

    /// Applies the batch atomically: all of it, or on error none of it. The error names
    /// the first message the kernel refused ("add rule ip kubewire nat-postrouting: No
    /// such file or directory").
    pub fn apply(&mut self, batch: &Batch) -> Result<()> {
        if let Some((op, reason)) = &batch.invalid {
            return Err(Error::NftInvalid {
                op: op.clone(),
                reason: reason.clone(),
            });
        }
        if batch.w.overflow {
            return Err(Error::NftInvalid {
                op: "encoding batch".into(),
                reason: "an attribute is larger than netlink's 64 KiB limit".into(),
            });
        }
        if batch.is_empty() {
            return Ok(());
        }
        let base = self.seq;
        let n = batch.entries.len() as u32;
        self.seq = self.seq.wrapping_add(n + 2);

        let mut w = Writer::default();
        w.buf.reserve(batch.w.buf.len() + 64);
        let begin = w.begin_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        w.end_msg(begin);
        set_seq(&mut w.buf, begin, base);
        let body = w.buf.len();
        w.buf.extend_from_slice(&batch.w.buf);
        for (i, entry) in batch.entries.iter().enumerate() {
            set_seq(
                &mut w.buf,
                body + entry.offset,
                base.wrapping_add(1 + i as u32),
            );
        }
        let end = w.begin_msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        w.end_msg(end);
        set_seq(&mut w.buf, end, base.wrapping_add(n + 1));

        // The whole batch must go in one datagram (one skb is one transaction), and every
        // acknowledgement must fit in the receive queue at once: size both buffers for
        // this batch. The FORCE variants need CAP_NET_ADMIN, which nf_tables needs too.
        setsockopt(
            &self.socket,
            sockopt::SndBufForce,
            &(w.buf.len() + 64 * 1024),
        )
        .map_err(|e| Error::sys("setting SO_SNDBUFFORCE", e))?;
        let rcv = (batch.entries.len() + 16) * ACK_TRUESIZE;
        setsockopt(&self.socket, sockopt::RcvBufForce, &rcv.max(256 * 1024))
            .map_err(|e| Error::sys("setting SO_RCVBUFFORCE", e))?;
        self.drain_stale();

        let sent = self
            .socket
            .send(&w.buf, 0)
            .map_err(|e| Error::sys("sending nf_tables batch", e))?;
        if sent != w.buf.len() {
            return Err(Error::sys(
                "sending nf_tables batch",
                io::Error::other(format!("sent {sent} of {} bytes", w.buf.len())),
            ));
        }
        self.collect_acks(batch, base)
    }

    /// The handle of table `name` in `family`, or `None` when there is no such table.
    /// The kernel gives a table made again under the same name a new handle, so a
    /// component that remembers the handle of the table it filled can tell, with one
    /// request, whether that table is still the one in the kernel.
    pub fn table_handle(&mut self, family: Family, name: &str) -> Result<Option<u64>> {
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg::GETTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            family.number(),
            0,
        );
        w.put_str(attr::TABLE_NAME, name);
        w.end_msg(m);
        match self.query(&mut w, &format!("get table {family} {name}"), msg::NEWTABLE) {
            Ok(payload) => Ok(wire::attributes(&payload)
                .find(|(ty, _)| *ty == attr::TABLE_HANDLE)
                .and_then(|(_, v)| v.try_into().ok())
                .map(u64::from_be_bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ruleset's generation in this namespace: it changes with every committed
    /// batch, whoever sends it. Unchanged since a component's own last commit, it means
    /// nobody has touched any table since.
    pub fn generation(&mut self) -> Result<u32> {
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg::GETGEN),
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            0,
        );
        w.end_msg(m);
        let payload = self.query(&mut w, "get generation", msg::NEWGEN)?;
        wire::attributes(&payload)
            .find(|(ty, _)| *ty == attr::GEN_ID)
            .and_then(|(_, v)| v.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| {
                Error::sys(
                    "get generation",
                    io::Error::other("the answer has no generation id"),
                )
            })
    }

    /// The rules of table `name` in `family`, chain by chain in the kernel's order
    /// (empty when there is no such table). A table of a few dozen rules lists in one
    /// answer; a component can compare it with what it applied to find rules someone
    /// flushed or deleted.
    pub fn rules(&mut self, family: Family, name: &str) -> Result<Vec<ListedRule>> {
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg::GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            family.number(),
            0,
        );
        w.put_str(attr::RULE_TABLE, name);
        w.end_msg(m);
        let what = format!("list rules of table {family} {name}");
        let answers = match self.dump(&w, &what, msg::NEWRULE) {
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            other => other?,
        };
        Ok(answers
            .iter()
            .filter_map(|payload| {
                let mut chain = None;
                let mut handle = None;
                for (ty, v) in wire::attributes(payload) {
                    match ty {
                        attr::RULE_CHAIN => chain = Some(c_string(v)),
                        attr::RULE_HANDLE => handle = v.try_into().ok().map(u64::from_be_bytes),
                        _ => {}
                    }
                }
                Some(ListedRule {
                    chain: chain?,
                    handle: handle?,
                })
            })
            .collect())
    }

    /// The elements of `set` as the kernel holds them, decoded with the set's key and
    /// data types: key, data, and for sets with timeouts each element's timeout and the
    /// time it has left ([`SetElement::expires`]). `None` when there is no such set.
    /// Interval sets are not decoded (their ends come as separate elements).
    pub fn elements(&mut self, set: &Set) -> Result<Option<Vec<SetElement>>> {
        let mut w = Writer::default();
        let m = w.begin_msg(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg::GETSETELEM),
            NLM_F_REQUEST | NLM_F_DUMP,
            set.family.number(),
            0,
        );
        w.put_str(attr::SET_ELEM_LIST_TABLE, &set.table);
        w.put_str(attr::SET_ELEM_LIST_SET, &set.name);
        w.end_msg(m);
        let what = format!("list elements of {} {} {}", set.family, set.table, set.name);
        let answers = match self.dump(&w, &what, msg::NEWSETELEM) {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let mut out = Vec::new();
        for payload in &answers {
            for (ty, list) in wire::attributes(payload) {
                if ty != attr::SET_ELEM_LIST_ELEMENTS {
                    continue;
                }
                for (ty, elem) in wire::nested(list) {
                    if ty != attr::LIST_ELEM {
                        continue;
                    }
                    let e = decode_element(set, elem).ok_or_else(|| {
                        Error::sys(
                            what.clone(),
                            io::Error::other("an element does not fit the set's types"),
                        )
                    })?;
                    out.push(e);
                }
            }
        }
        Ok(Some(out))
    }

    /// Sends a dump request and collects the payloads of its answers of type `reply`,
    /// starting again (a few times) when the ruleset changed while the kernel answered.
    fn dump(&mut self, w: &Writer, what: &str, reply: u8) -> Result<Vec<Vec<u8>>> {
        let reply_ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(reply);
        for _ in 0..DUMP_ATTEMPTS {
            let mut req = w.buf.clone();
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            set_seq(&mut req, 0, seq);
            self.drain_stale();
            self.socket
                .send(&req, 0)
                .map_err(|e| Error::sys(format!("sending {what}"), e))?;
            let mut answers = Vec::new();
            let mut interrupted = false;
            let mut buf = Vec::with_capacity(64 * 1024);
            'recv: loop {
                buf.clear();
                // Blocking: a dump always ends with NLMSG_DONE or an error, and the
                // kernel fills in the next part as each one is read.
                match self.socket.recv(&mut buf, 0) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::sys(format!("reading the answer to {what}"), e)),
                }
                for m in wire::messages(&buf) {
                    interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                    if m.ty == reply_ty {
                        answers.push(m.payload.to_vec());
                    } else if m.ty == NLMSG_DONE {
                        break 'recv;
                    } else if m.ty == NLMSG_ERROR
                        && let Some(ack) = wire::parse_ack(&m)
                    {
                        if ack.errno != 0 {
                            return Err(Error::Nft {
                                op: what.to_owned(),
                                errno: ack.errno,
                                detail: ack.text,
                            });
                        }
                        break 'recv;
                    }
                }
            }
            if !interrupted {
                return Ok(answers);
            }
        }
        Err(Error::sys(
            what,
            io::Error::other(format!(
                "the ruleset kept changing during {DUMP_ATTEMPTS} attempts"
            )),
        ))
    }

    /// Sends one request message (not a dump) and returns the payload of the answer of
    /// type `reply`. The kernel answers inside `sendmsg`, so the answer and the
    /// acknowledgement are queued when `send` returns.
    fn query(&mut self, w: &mut Writer, what: &str, reply: u8) -> Result<Vec<u8>> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        set_seq(&mut w.buf, 0, seq);
        self.drain_stale();
        self.socket
            .send(&w.buf, 0)
            .map_err(|e| Error::sys(format!("sending {what}"), e))?;
        let reply_ty = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(reply);
        let mut answer = None;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::sys(format!("reading the answer to {what}"), e)),
            }
            for m in wire::messages(&buf) {
                if m.ty == reply_ty {
                    answer = Some(m.payload.to_vec());
                } else if m.ty == NLMSG_ERROR
                    && let Some(ack) = wire::parse_ack(&m)
                    && ack.errno != 0
                {
                    return Err(Error::Nft {
                        op: what.to_owned(),
                        errno: ack.errno,
                        detail: ack.text,
                    });
                }
            }
        }
        answer.ok_or_else(|| Error::sys(what, io::Error::other("the kernel gave no answer")))
    }

    /// Drops anything left over from an earlier batch that failed half-read.
    fn drain_stale(&self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            if self.socket.recv(&mut buf, MSG_DONTWAIT).is_err() {
                return;
            }
        }
    }

    fn collect_acks(&self, batch: &Batch, base: u32) -> Result<()> {
        let n = batch.entries.len();
        let mut acked = 0usize;
        // (message index, errno, kernel text) of the earliest failing message.
        let mut first_err: Option<(usize, i32, Option<String>)> = None;
        let mut batch_err: Option<i32> = None;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::sys("reading nf_tables acknowledgements", e)),
            }
            for m in wire::messages(&buf) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some(ack) = wire::parse_ack(&m) else {
                    continue;
                };
                let index = ack.seq.wrapping_sub(base).wrapping_sub(1) as usize;
                if index >= n {
                    // The batch delimiters themselves (e.g. EPERM on BATCH_BEGIN).
                    if ack.errno != 0 {
                        batch_err.get_or_insert(ack.errno);
                    }
                    continue;
                }
                acked += 1;
                if ack.errno != 0 && first_err.as_ref().is_none_or(|(i, ..)| index < *i) {
                    first_err = Some((index, ack.errno, ack.text));
                }
            }
        }
        if let Some((index, errno, detail)) = first_err {
            return Err(Error::Nft {
                op: batch.entries[index].what.clone(),
                errno,
                detail,
            });
        }
        if let Some(errno) = batch_err {
            return Err(Error::Nft {
                // Answers to the batch header: refused as a whole, or failed at commit.
                op: "applying nf_tables batch".into(),
                errno,
                detail: None,
            });
        }
        if acked != n {
            return Err(Error::sys(
                "reading nf_tables acknowledgements",
                io::Error::other(format!(
                    "the kernel acknowledged {acked} of {n} messages; the outcome is unknown"
                )),
            ));
        }
        Ok(())
    }
}

/// A NUL-terminated string attribute.
fn c_string(v: &[u8]) -> String {
    let v = v.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(v).into_owned()
}

/// One element of a set element dump (the attributes of an NFTA_LIST_ELEM).
fn decode_element(set: &Set, attrs: &[u8]) -> Option<SetElement> {
    let mut e = SetElement::new(Vec::new());
    let value = |v: &[u8]| {
        wire::nested(v)
            .find(|(ty, _)| *ty == attr::DATA_VALUE)
            .map(|(_, v)| v.to_vec())
    };
    let ms = |v: &[u8]| {
        v.try_into()
            .ok()
            .map(|b| Duration::from_millis(u64::from_be_bytes(b)))
    };
    for (ty, v) in wire::nested(attrs) {
        match ty {
            attr::SET_ELEM_KEY => e.key = decode_data(&set.key, &value(v)?)?,
            attr::SET_ELEM_DATA => {
                e.data = Some(match set.data.as_ref()? {
                    MapData::Value(types) => ElementData::Value(decode_data(types, &value(v)?)?),
                    MapData::Verdict => ElementData::Verdict(decode_verdict(v)?),
                })
            }
            attr::SET_ELEM_TIMEOUT => e.timeout = ms(v),
            attr::SET_ELEM_EXPIRATION => e.expires = ms(v),
            _ => {}
        }
    }
    (!e.key.is_empty()).then_some(e)
}

/// An NFTA_DATA_VERDICT inside an `nft_data` attribute.
fn decode_verdict(data: &[u8]) -> Option<Verdict> {
    let (_, verdict) = wire::nested(data).find(|(ty, _)| *ty == attr::DATA_VERDICT)?;
    let mut code = None;
    let mut chain = None;
    for (ty, v) in wire::nested(verdict) {
        match ty {
            attr::VERDICT_CODE => code = v.try_into().ok().map(i32::from_be_bytes),
            attr::VERDICT_CHAIN => chain = Some(c_string(v)),
            _ => {}
        }
    }
    Some(match code? {
        0 => Verdict::Drop,
        1 => Verdict::Accept,
        -1 => Verdict::Continue,
        -3 => Verdict::Jump(chain?),
        -4 => Verdict::Goto(chain?),
        -5 => Verdict::Return,
        _ => return None,
    })
}

fn set_seq(buf: &mut [u8], msg: usize, seq: u32) {
    buf[msg + 8..msg + 12].copy_from_slice(&seq.to_ne_bytes());
}
