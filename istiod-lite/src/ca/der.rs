//! Just enough DER to read what rcgen does not say: a CSR's own SubjectPublicKeyInfo, the size
//! of an RSA modulus, a certificate's notAfter. The input is a caller's: every read is
//! bounds-checked and a malformed one is `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT`, the version of a v2/v3 certificate.
const CONTEXT_0: u8 = 0xa0;

/// One DER element at the start of `b`: its tag, its contents, and the bytes after it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first & 0x80 == 0 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len, rest) = rest.split_at(n);
        (len.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// The element with tag `want` at the start of `b`: its contents and the bytes after it.
fn expect(b: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, after) = tlv(b)?;
    (tag == want).then_some((content, after))
}

/// The whole element (header included) at the start of `b`, and the bytes after it.
fn element(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, after) = tlv(b)?;
    Some((&b[..b.len() - after.len()], after))
}

/// Why a CSR's DER could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrShape {
    /// Not a DER SEQUENCE with a CertificationRequestInfo and a key in it.
    Malformed,
    /// Bytes follow the CSR inside its PEM block.
    Trailing,
}

/// The SubjectPublicKeyInfo (the whole element) of the PKCS #10 request `der`, which must be
/// exactly one request: `SEQUENCE { SEQUENCE { version, subject, subjectPKInfo, .. }, .. }`.
pub(crate) fn csr_spki(der: &[u8]) -> Result<&[u8], CsrShape> {
    let (csr, after) = expect(der, SEQUENCE).ok_or(CsrShape::Malformed)?;
    if !after.is_empty() {
        return Err(CsrShape::Trailing);
    }
    let (info, _) = expect(csr, SEQUENCE).ok_or(CsrShape::Malformed)?;
    let (_version, rest) = expect(info, INTEGER).ok_or(CsrShape::Malformed)?;
    let (_subject, rest) = expect(rest, SEQUENCE).ok_or(CsrShape::Malformed)?;
    let (spki, _) = element(rest).ok_or(CsrShape::Malformed)?;
    match spki.first() {
        Some(&SEQUENCE) => Ok(spki),
        _ => Err(CsrShape::Malformed),
    }
}

/// The size in bits of the modulus of an `RSAPublicKey ::= SEQUENCE { modulus, exponent }`.
pub(crate) fn rsa_modulus_bits(key: &[u8]) -> Option<usize> {
    let (seq, _) = expect(key, SEQUENCE)?;
    let (modulus, _) = expect(seq, INTEGER)?;
    let significant = modulus.iter().position(|b| *b != 0).map(|i| &modulus[i..])?;
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

/// The notAfter of the DER certificate `cert`.
pub(crate) fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let rest = match expect(tbs, CONTEXT_0) {
        Some((_version, rest)) => rest,
        None => tbs,
    };
    let (_serial, rest) = expect(rest, INTEGER)?;
    let (_signature, rest) = expect(rest, SEQUENCE)?;
    let (_issuer, rest) = expect(rest, SEQUENCE)?;
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (_, _not_before, rest) = tlv(validity)?;
    let (tag, time, _) = tlv(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    // RFC 5280 §4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY < 50 is 20YY), GeneralizedTime
    // YYYYMMDDHHMMSSZ.
    let (year, rest) = match tag {
        UTC_TIME if time.len() == 13 => {
            let yy: i64 = time.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, time.get(2..)?)
        }
        GENERALIZED_TIME if time.len() == 15 => (time.get(..4)?.parse().ok()?, time.get(4..)?),
        _ => return None,
    };
    if !rest.ends_with('Z') || !rest[..rest.len() - 1].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_in_both_time_forms() {
        // 2023-11-14T22:13:20Z is written as a UTCTime, 2100-02-05T00:00:00Z as a GeneralizedTime.
        for secs in [1_700_000_000u64, 4_102_444_800 + 35 * 86400] {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.not_after = at.into();
            let cert = p.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()), Some(at));
        }
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
    }

    #[test]
    fn never_panics_on_truncations() {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap();
        let der = csr.der().to_vec();
        assert!(csr_spki(&der).is_ok());
        for n in 0..der.len() {
            assert!(csr_spki(&der[..n]).is_err());
        }
        let mut long = der.clone();
        long.push(0);
        assert_eq!(csr_spki(&long), Err(CsrShape::Trailing));
    }
}
