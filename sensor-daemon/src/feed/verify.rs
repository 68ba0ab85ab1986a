//! Consensus signatures: the directory authorities' key certificates
//! (`/tor/keys/all`, a tor's `cached-certs`) and the `directory-signature`s
//! of a consensus checked against them, as tor checks them.
//!
//! Policy (`signatures` in a `[[feed]]`): with `required`, the default, a
//! consensus is accepted only when more than half of the trusted
//! authorities (`authorities`, default [`TOR_AUTHORITIES`]) signed it with a
//! key whose certificate is valid now: the certificate signed by the
//! authority's identity key (`dir-key-certification`), its identity key's
//! SHA-1 equal to the trusted fingerprint, the signing key cross-certified
//! (`dir-key-crosscert`), and not expired. `off` accepts a consensus
//! without looking at its signatures.
//!
//! The RSA work is the `rsa` crate's: PKCS#1 v1.5 over the raw digest (tor
//! signs digests without the DigestInfo prefix). Untrusted bytes: the
//! certificate parser is fuzzed (`feed_certs`).

use std::collections::BTreeSet;
use std::time::SystemTime;

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::{Pkcs1v15Sign, PublicKey as RsaPublicKey};
use sha1::{Digest as _, Sha1};
use sha2::Sha256;

use super::parse::{ConsensusInfo, parse_time};

/// The v3 identity fingerprints of the Tor network's directory authorities
/// (moria1, tor26, dizum, gabelmoo, dannenberg, maatuska, longclaw, bastet,
/// faravahar), as tor's `src/app/config/auth_dirs.inc` lists them.
pub const TOR_AUTHORITIES: [&str; 9] = [
    "F533C81CEF0BC0267857C99B2F471ADF249FA232",
    "2F3DF9CA0E5D36F2685A2DA67184EB8DCB8CBA8C",
    "E8A9C45EDE6D711294FADF8E7951F4DE6CA56B58",
    "ED03BB616EB2F60BEC80151114BB25CEF515B226",
    "0232AF901C31A04EE9848595AF9BB7620D4C5B2E",
    "49015F787433103580E3B66A1707A00E60F2D15B",
    "23D15D965BC35114467363C165C4F724B64B4F66",
    "27102BC123E7AF1D4741AE047E160C91ADC76B21",
    "70849B868D606BAECFB6128C5E3D782029AA394F",
];

/// One authority key certificate whose own signatures verified.
#[derive(Debug, Clone)]
pub struct KeyCert {
    /// The authority's identity fingerprint (SHA-1 of its identity key).
    pub identity: String,
    /// SHA-1 of the signing key, as `directory-signature` names it.
    pub signing_key_digest: String,
    pub signing_key: RsaPublicKey,
    pub expires: SystemTime,
}

/// Certificates that could be used, and why the others could not.
#[derive(Debug, Default)]
pub struct Certs {
    pub certs: Vec<KeyCert>,
    /// One line per certificate refused (`certificate N (fingerprint):
    /// reason`).
    pub refused: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The object (`-----BEGIN X-----` ... `-----END X-----`) on the lines after
/// the line `keyword`, decoded.
fn object_after(doc: &str, keyword: &str) -> Result<Vec<u8>, String> {
    let mut lines = doc.lines();
    lines
        .by_ref()
        .find(|l| *l == keyword)
        .ok_or_else(|| format!("no {keyword}"))?;
    let begin = lines.next().unwrap_or("");
    if !(begin.starts_with("-----BEGIN ") && begin.ends_with("-----")) {
        return Err(format!("{keyword} is not followed by a -----BEGIN block"));
    }
    let mut b64 = String::new();
    for line in lines {
        if line.starts_with("-----END ") {
            return base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .map_err(|e| format!("{keyword}: bad base64 ({e})"));
        }
        b64.push_str(line.trim());
    }
    Err(format!("{keyword}: no -----END line"))
}

fn value_of<'a>(doc: &'a str, keyword: &str) -> Result<&'a str, String> {
    doc.lines()
        .find_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
        .map(str::trim)
        .ok_or_else(|| format!("no {keyword} line"))
}

/// RSA PKCS#1 v1.5 over a raw digest (no DigestInfo), as tor signs.
fn verify_raw(key: &RsaPublicKey, digest: &[u8], signature: &[u8]) -> bool {
    key.verify(Pkcs1v15Sign::new_unprefixed(), digest, signature)
        .is_ok()
}

/// Parses and checks every certificate in `text` (concatenated, as
/// `/tor/keys/all` and `cached-certs` have them). A certificate that does
/// not verify, or expired before `now`, is refused with a reason.
pub fn parse_certs(text: &str, now: SystemTime) -> Certs {
    let mut out = Certs::default();
    let starts: Vec<usize> = text
        .match_indices("dir-key-certificate-version")
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .collect();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let doc = &text[start..end];
        match one_cert(doc, now) {
            Ok(cert) => out.certs.push(cert),
            Err(reason) => {
                let fp = value_of(doc, "fingerprint").unwrap_or("?");
                out.refused
                    .push(format!("certificate {} ({fp}): {reason}", n + 1));
            }
        }
    }
    out
}

fn one_cert(doc: &str, now: SystemTime) -> Result<KeyCert, String> {
    if value_of(doc, "dir-key-certificate-version")? != "3" {
        return Err("not a version 3 certificate".into());
    }
    let fingerprint = value_of(doc, "fingerprint")?.to_ascii_uppercase();
    let expires = parse_time(value_of(doc, "dir-key-expires")?)
        .ok_or("dir-key-expires is not a YYYY-MM-DD HH:MM:SS time")?;
    let identity_der = object_after(doc, "dir-identity-key")?;
    let signing_der = object_after(doc, "dir-signing-key")?;
    let identity_key = RsaPublicKey::from_pkcs1_der(&identity_der)
        .map_err(|e| format!("dir-identity-key: {e}"))?;
    let signing_key =
        RsaPublicKey::from_pkcs1_der(&signing_der).map_err(|e| format!("dir-signing-key: {e}"))?;
    let identity_digest = Sha1::digest(&identity_der);
    if hex(&identity_digest) != fingerprint {
        return Err("the identity key does not match the fingerprint".into());
    }
    // Signed: from the start through "dir-key-certification\n".
    const CERTIFICATION: &str = "\ndir-key-certification\n";
    let signed_end =
        doc.find(CERTIFICATION).ok_or("no dir-key-certification")? + CERTIFICATION.len();
    let certification = object_after(doc, "dir-key-certification")?;
    let digest = Sha1::digest(&doc.as_bytes()[..signed_end]);
    if !verify_raw(&identity_key, &digest, &certification) {
        return Err("dir-key-certification does not verify with the identity key".into());
    }
    let crosscert = object_after(doc, "dir-key-crosscert")?;
    if !verify_raw(&signing_key, &identity_digest, &crosscert) {
        return Err("dir-key-crosscert does not verify with the signing key".into());
    }
    if expires < now {
        return Err(format!("expired at {}", crate::time::rfc3339_secs(expires)));
    }
    Ok(KeyCert {
        identity: fingerprint,
        signing_key_digest: hex(&Sha1::digest(&signing_der)),
        signing_key,
        expires,
    })
}

/// Which trusted authorities signed, and what was wrong with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Identity fingerprints of the trusted authorities whose signature
    /// verified.
    pub signed_by: Vec<String>,
    pub trusted: usize,
}

/// Checks `info`'s signatures over `body` against `certs` and the trusted
/// identities. Ok when more than half of `trusted` signed; the error is one
/// line that says how many did and why each of the others did not count.
pub fn verify_consensus(
    body: &[u8],
    info: &ConsensusInfo,
    certs: &[KeyCert],
    trusted: &[String],
) -> Result<Verified, String> {
    if info.signatures.is_empty() || info.signed.is_empty() {
        return Err("the consensus has no directory-signature".into());
    }
    let signed = body
        .get(info.signed.clone())
        .ok_or("the signed range is outside the body")?;
    let (sha1, sha256) = (Sha1::digest(signed), Sha256::digest(signed));
    let mut good = BTreeSet::new();
    let mut why = Vec::new();
    for sig in &info.signatures {
        if !trusted.contains(&sig.identity) {
            why.push(format!("{}: not a trusted authority", short(&sig.identity)));
            continue;
        }
        let digest: &[u8] = match sig.algorithm.as_str() {
            "sha1" => &sha1,
            "sha256" => &sha256,
            other => {
                why.push(format!("{}: digest {other} unknown", short(&sig.identity)));
                continue;
            }
        };
        let cert = certs
            .iter()
            .find(|c| c.identity == sig.identity && c.signing_key_digest == sig.signing_key_digest);
        match cert {
            None => why.push(format!(
                "{}: no valid certificate for signing key {}",
                short(&sig.identity),
                short(&sig.signing_key_digest)
            )),
            Some(c) if verify_raw(&c.signing_key, digest, &sig.signature) => {
                good.insert(sig.identity.clone());
            }
            Some(_) => why.push(format!(
                "{}: {} signature does not verify",
                short(&sig.identity),
                sig.algorithm
            )),
        }
    }
    let need = trusted.len() / 2 + 1;
    if good.len() >= need {
        return Ok(Verified {
            signed_by: good.into_iter().collect(),
            trusted: trusted.len(),
        });
    }
    why.dedup();
    Err(format!(
        "signed by {} of {} trusted authorities, {need} needed ({})",
        good.len(),
        trusted.len(),
        if why.is_empty() {
            "no signature from a trusted authority".to_owned()
        } else {
            why.join("; ")
        }
    ))
}

fn short(fp: &str) -> &str {
    fp.get(..8).unwrap_or(fp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse::parse;

    fn data(path: &str) -> String {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/data/consensus/");
        std::fs::read_to_string(format!("{p}{path}")).unwrap()
    }

    /// A consensus, its certificates read at its own valid-after (the
    /// test network's certificates expired in 2001), and its authorities.
    fn load(consensus: &str, certs: &str) -> (Vec<u8>, ConsensusInfo, Certs) {
        let body = data(consensus).into_bytes();
        let info = parse(&body, None, true).unwrap().consensus.unwrap();
        let certs = parse_certs(&data(certs), info.valid_after);
        (body, *info, certs)
    }

    #[test]
    fn a_tor_signed_consensus_of_each_flavour_verifies() {
        for consensus in ["cached-consensus", "cached-microdesc-consensus"] {
            let (body, info, certs) = load(
                &format!("arti-testdata2/{consensus}"),
                "arti-testdata2/cached-certs",
            );
            assert_eq!(certs.certs.len(), 4, "{:?}", certs.refused);
            let trusted = info.authorities.clone();
            let ok = verify_consensus(&body, &info, &certs.certs, &trusted).unwrap();
            assert_eq!(ok.signed_by.len(), 4, "{consensus}");
            // Three of four trusted authorities are enough; two are not.
            let err = verify_consensus(&body, &info, &certs.certs[..2], &trusted).unwrap_err();
            assert!(
                err.starts_with("signed by 2 of 4 trusted authorities, 3 needed"),
                "{err}"
            );
            assert!(err.contains("no valid certificate"), "{err}");
        }
        let (body, info, certs) = load("arti-2020/mdconsensus1.txt", "arti-2020/authcerts2.txt");
        let trusted = info.authorities.clone();
        assert!(verify_consensus(&body, &info, &certs.certs, &trusted).is_ok());
    }

    #[test]
    fn the_tor_network_authorities_do_not_vouch_for_a_test_network() {
        let (body, info, certs) = load(
            "arti-testdata2/cached-consensus",
            "arti-testdata2/cached-certs",
        );
        let tor: Vec<String> = TOR_AUTHORITIES.iter().map(|s| (*s).to_owned()).collect();
        let err = verify_consensus(&body, &info, &certs.certs, &tor).unwrap_err();
        assert!(
            err.starts_with("signed by 0 of 9 trusted authorities, 5 needed"),
            "{err}"
        );
        assert!(err.contains("not a trusted authority"), "{err}");
    }

    #[test]
    fn one_changed_byte_breaks_every_signature() {
        let (mut body, info, certs) = load(
            "arti-testdata2/cached-consensus",
            "arti-testdata2/cached-certs",
        );
        let at = body.windows(3).position(|w| w == b"\nr ").unwrap() + 3;
        body[at] ^= 0x01;
        let trusted = info.authorities.clone();
        let err = verify_consensus(&body, &info, &certs.certs, &trusted).unwrap_err();
        assert!(err.starts_with("signed by 0 of 4"), "{err}");
        assert_eq!(
            err.matches("sha1 signature does not verify").count(),
            4,
            "{err}"
        );
    }

    #[test]
    fn real_network_certificates_and_a_cut_consensus() {
        // The real /tor/keys/all: every certificate verifies; at the
        // consensus's time the retired authorities' ones have expired.
        let (body, info, certs) =
            load("live-truncated/consensus-ns", "live-truncated/authcert-all");
        let all = parse_certs(&data("live-truncated/authcert-all"), BEFORE_ANY_EXPIRY);
        assert_eq!(all.certs.len(), 17, "{:?}", all.refused);
        assert_eq!(certs.certs.len(), 9, "{:?}", certs.refused);
        assert!(
            certs.refused.iter().all(|r| r.contains("expired at")),
            "{:?}",
            certs.refused
        );
        let tor: Vec<String> = TOR_AUTHORITIES.iter().map(|s| (*s).to_owned()).collect();
        // Every authority has a certificate for its signing key, but the
        // document was cut to a few relays, so no signature verifies.
        let err = verify_consensus(&body, &info, &certs.certs, &tor).unwrap_err();
        assert_eq!(err.matches("signature does not verify").count(), 9, "{err}");
    }

    #[test]
    fn a_forged_certificate_is_refused_with_its_reason() {
        let text = data("arti-testdata2/cached-certs");
        let at = text.find("dir-key-expires ").unwrap() + "dir-key-expires ".len();
        let forged = format!("{}2099{}", &text[..at], &text[at + 4..]);
        let certs = parse_certs(&forged, BEFORE_ANY_EXPIRY);
        assert_eq!(certs.certs.len(), 3);
        assert!(
            certs.refused[0].contains("dir-key-certification does not verify"),
            "{:?}",
            certs.refused
        );
    }

    /// 1970: before any certificate expired.
    const BEFORE_ANY_EXPIRY: SystemTime = SystemTime::UNIX_EPOCH;
}
