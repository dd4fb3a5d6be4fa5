//! The peer link's handshake: both ends prove that they know the group's secret
//! before the link carries any I/O, and neither ever sends the secret itself.
//!
//! ```text
//! caller                                          server
//!   Hello{from, to, group, nonce_c}  ──────────►  version, group and `to` checked
//!                                    ◄──────────  Challenge{nonce_s, mac_s}   (or a Verdict refusing)
//!   mac_s checked                                  mac_s = HMAC(secret, "server" ‖ Hello ‖ Challenge fields)
//!   Proof{mac_c}                     ──────────►  mac_c checked
//!                                    ◄──────────  Verdict{Welcome, window}    (or BadProof)
//!   mac_c = HMAC(secret, "client" ‖ Hello ‖ Challenge)
//! ```
//!
//! Both nonces are fresh per connection (from the OS's random source), so a recorded
//! handshake proves nothing when replayed; each MAC covers both ends' routing ids and
//! the group's uuid, so a proof made for one pair of peers or one group is worth
//! nothing for another. HMAC-SHA256 from the RustCrypto crates (`hmac`, `sha2`): the
//! standard construction, compared in constant time. The link itself is not
//! encrypted: peers sit on the storage network, as NVMe/TCP hosts do (TLS for both is
//! a later step).
//!
//! This module is plain state, no I/O: the link drives it with the bytes it reads.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::proto::{Challenge, Hello, Proof, Verdict, VerdictCode, CHALLENGE_LEN, PROOF_LEN, VERDICT_LEN, VERSION};

type HmacSha256 = Hmac<Sha256>;

/// The group's shared secret (the contents of `group.secret_file`, trimmed).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret of these bytes.
    pub fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A fresh random nonce from the operating system.
pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).expect("the OS random source works");
    n
}

/// The fields of a Challenge that its MAC covers (all but the MAC).
fn challenge_fields(c: &Challenge) -> [u8; CHALLENGE_LEN] {
    let mut c = *c;
    c.mac = [0; 32];
    c.encode()
}

fn server_mac(secret: &Secret, hello: &Hello, c: &Challenge) -> HmacSha256 {
    let mut m = secret.mac();
    m.update(b"quire-peer-link server");
    m.update(&hello.encode());
    m.update(&challenge_fields(c));
    m
}

fn client_mac(secret: &Secret, hello: &Hello, c: &Challenge) -> HmacSha256 {
    let mut m = secret.mac();
    m.update(b"quire-peer-link client");
    m.update(&hello.encode());
    m.update(&c.encode());
    m
}

/// The calling side's handshake.
pub struct Caller {
    hello: Hello,
    challenge: Option<Challenge>,
    secret: Secret,
}

impl Caller {
    /// A caller `me` that wants to reach peer `to` of `group`; returns the Hello to send.
    pub fn new(me: u16, to: u16, group: [u8; 16], secret: Secret) -> (Caller, [u8; super::proto::HELLO_LEN]) {
        let hello = Hello { version: VERSION, from: me, to, group, nonce: nonce() };
        (Caller { hello, challenge: None, secret }, hello.encode())
    }

    /// The server's answer to the Hello: its Challenge (checked: the server knows the
    /// secret, is the peer meant, in the same group), giving the Proof to send; or a
    /// Verdict refusing the link, or garbage: the reason.
    pub fn on_challenge(&mut self, b: &[u8; CHALLENGE_LEN]) -> Result<[u8; PROOF_LEN], String> {
        if Verdict::is_verdict(b) {
            let v = Verdict::decode(b)?;
            return Err(format!("refused ({:?}): {}", v.code, v.reason));
        }
        let c = Challenge::decode(b)?;
        if c.version != VERSION {
            return Err(format!("the peer speaks link version {}, this one {VERSION}", c.version));
        }
        if c.group != self.hello.group {
            return Err("the peer belongs to another group (group uuid differs)".into());
        }
        if c.from != self.hello.to || c.to != self.hello.from {
            return Err(format!("reached peer #{} (for #{}), not peer #{} as meant", c.from, c.to, self.hello.to));
        }
        if c.nonce == self.hello.nonce {
            return Err("the peer echoed our own nonce (a reflection, not a peer)".into());
        }
        server_mac(&self.secret, &self.hello, &c)
            .verify_slice(&c.mac)
            .map_err(|_| "the peer does not know the group's secret (group.secret_file differs)".to_string())?;
        let mac = client_mac(&self.secret, &self.hello, &c).finalize().into_bytes();
        self.challenge = Some(c);
        Ok(Proof { mac: mac.into() }.encode())
    }

    /// The server's Verdict: the window of requests the link allows, or why it refused.
    pub fn on_verdict(&self, b: &[u8; VERDICT_LEN]) -> Result<u16, String> {
        assert!(self.challenge.is_some(), "a Verdict comes after the Proof");
        let v = Verdict::decode(b)?;
        match v.code {
            VerdictCode::Welcome if v.window > 0 => Ok(v.window),
            VerdictCode::Welcome => Err("the peer welcomed the link with a window of 0".into()),
            code => Err(format!("refused ({code:?}): {}", v.reason)),
        }
    }
}

/// The serving side's handshake.
pub struct Server {
    hello: Hello,
    challenge: Challenge,
    secret: Secret,
}

/// A refusal: the Verdict to send and what to log.
pub struct Refusal {
    /// Sent to the caller.
    pub verdict: [u8; VERDICT_LEN],
    /// Logged here.
    pub reason: String,
}

/// The refusal of a peer that has not joined its group yet.
pub fn not_ready() -> Refusal {
    refuse(VerdictCode::NotReady, "this peer has not joined its group yet".into())
}

fn refuse(code: VerdictCode, reason: String) -> Refusal {
    let verdict = Verdict { code, window: 0, reason: reason.clone() }.encode();
    Refusal { verdict, reason }
}

impl Server {
    /// A caller's Hello to peer `me` of `group` (`None` while this peer has no group
    /// yet): the Challenge to answer with, or a refusal.
    pub fn on_hello(
        me: u16,
        group: Option<[u8; 16]>,
        secret: &Secret,
        b: &[u8; super::proto::HELLO_LEN],
    ) -> Result<(Server, [u8; CHALLENGE_LEN]), Refusal> {
        let hello = Hello::decode(b).map_err(|e| refuse(VerdictCode::Version, e))?;
        let Some(group) = group else {
            return Err(refuse(VerdictCode::NotReady, "this peer has not joined its group yet".into()));
        };
        if hello.version != VERSION {
            return Err(refuse(
                VerdictCode::Version,
                format!("link version {} (this peer speaks {VERSION})", hello.version),
            ));
        }
        if hello.group != group {
            return Err(refuse(VerdictCode::OtherGroup, "a caller from another group (group uuid differs)".into()));
        }
        if hello.to != me {
            return Err(refuse(
                VerdictCode::WrongPeer,
                format!("the caller meant peer #{}, this is peer #{me}", hello.to),
            ));
        }
        let mut challenge =
            Challenge { version: VERSION, from: me, to: hello.from, group, nonce: nonce(), mac: [0; 32] };
        challenge.mac = server_mac(secret, &hello, &challenge).finalize().into_bytes().into();
        let bytes = challenge.encode();
        Ok((Server { hello, challenge, secret: secret.clone() }, bytes))
    }

    /// The caller's Proof: the Verdict welcoming it with `window`, or a refusal.
    pub fn on_proof(&self, b: &[u8; PROOF_LEN], window: u16) -> Result<[u8; VERDICT_LEN], Refusal> {
        let p = Proof::decode(b).map_err(|e| refuse(VerdictCode::BadProof, e))?;
        client_mac(&self.secret, &self.hello, &self.challenge).verify_slice(&p.mac).map_err(|_| {
            refuse(
                VerdictCode::BadProof,
                format!("peer #{} does not know the group's secret (group.secret_file differs)", self.hello.from),
            )
        })?;
        Ok(Verdict { code: VerdictCode::Welcome, window, reason: String::new() }.encode())
    }

    /// The caller's routing id (as it said in its Hello, proven by its Proof).
    pub fn caller(&self) -> u16 {
        self.hello.from
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: [u8; 16] = [7; 16];

    fn run(
        caller_secret: &[u8],
        server_secret: &[u8],
        group_c: [u8; 16],
        group_s: Option<[u8; 16]>,
        to: u16,
    ) -> Result<u16, String> {
        let (mut caller, hello) = Caller::new(1, to, group_c, Secret::new(caller_secret));
        let server_secret = Secret::new(server_secret);
        let (server, challenge) = match Server::on_hello(2, group_s, &server_secret, &hello) {
            Ok(x) => x,
            Err(r) => return caller.on_challenge(&r.verdict).map(|_| 0),
        };
        let proof = caller.on_challenge(&challenge)?;
        match server.on_proof(&proof, 64) {
            Ok(v) => caller.on_verdict(&v),
            Err(r) => Err(format!("server: {}", r.reason)),
        }
    }

    #[test]
    fn peers_with_one_secret_meet() {
        assert_eq!(run(b"0123456789abcdef", b"0123456789abcdef", GROUP, Some(GROUP), 2), Ok(64));
    }

    #[test]
    fn a_wrong_secret_is_caught_by_the_caller_and_named() {
        let e = run(b"0123456789abcdef", b"fedcba9876543210", GROUP, Some(GROUP), 2).unwrap_err();
        assert!(e.contains("does not know the group's secret"), "{e}");
    }

    #[test]
    fn a_caller_without_the_secret_is_refused_by_the_server() {
        // A caller that skips checking the server (or forges a proof) still fails.
        let secret = Secret::new(b"0123456789abcdef");
        let (_c, hello) = Caller::new(1, 2, GROUP, Secret::new(b"not the secret!!"));
        let (server, _challenge) = Server::on_hello(2, Some(GROUP), &secret, &hello).ok().unwrap();
        let forged = Proof { mac: [0xaa; 32] }.encode();
        let Err(r) = server.on_proof(&forged, 64) else { panic!("a forged proof was accepted") };
        assert!(r.reason.contains("does not know the group's secret"), "{}", r.reason);
        assert!(Verdict::decode(&r.verdict).unwrap().code == VerdictCode::BadProof);
    }

    #[test]
    fn strangers_are_refused_with_the_reason() {
        let s = b"0123456789abcdef";
        let e = run(s, s, [1; 16], Some(GROUP), 2).unwrap_err();
        assert!(e.contains("another group"), "{e}");
        let e = run(s, s, GROUP, Some(GROUP), 5).unwrap_err();
        assert!(e.contains("meant peer #5"), "{e}");
        let e = run(s, s, GROUP, None, 2).unwrap_err();
        assert!(e.contains("not joined its group"), "{e}");
    }

    #[test]
    fn a_replayed_challenge_does_not_fit_a_new_hello() {
        let secret = Secret::new(b"0123456789abcdef");
        let (_old, hello) = Caller::new(1, 2, GROUP, secret.clone());
        let (_server, recorded) = Server::on_hello(2, Some(GROUP), &secret, &hello).ok().unwrap();
        // An impostor without the secret replays the recorded Challenge to a new caller.
        let (mut fresh, _hello2) = Caller::new(1, 2, GROUP, secret);
        let e = fresh.on_challenge(&recorded).unwrap_err();
        assert!(e.contains("does not know the group's secret"), "{e}");
    }
}
