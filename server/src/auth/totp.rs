//! Time-based one-time passwords (RFC 6238, computed by `totp-rs`):
//! HMAC-SHA-1, six digits, 30-second steps, one step of drift either way.
//! Here: which step a code belongs to (for replay protection), keys, and
//! the enrolment URI and QR code. Pure: the caller passes the clock, so
//! tests pin it.

use data_encoding::BASE32_NOPAD;
use totp_rs::{Builder, Secret, Totp};

pub const STEP_SECONDS: u64 = 30;
/// 160 bits, the key size RFC 4226 §4 recommends for HMAC-SHA-1.
const KEY_BYTES: usize = 20;

/// A new random key, base32 without padding (what authenticator apps read).
pub fn new_key() -> String {
    use rand::RngCore;
    let mut key = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    BASE32_NOPAD.encode(&key)
}

/// The time step of `unix_seconds`.
pub fn step_at(unix_seconds: u64) -> u64 {
    unix_seconds / STEP_SECONDS
}

/// RFC 6238's defaults, which every authenticator app assumes: SHA-1, six
/// digits, 30 s, one step of drift. `None` when the key is not base32 of at
/// least 128 bits.
fn totp(key: &str) -> Option<Totp> {
    let secret = Secret::try_from_base32(key).ok()?;
    let totp = Builder::new().with_secret(secret).build().ok()?;
    debug_assert_eq!(totp.step(), STEP_SECONDS);
    Some(totp)
}

/// The code of `key` (base32) at `step`.
pub fn code_at_step(key: &str, step: u64) -> Option<String> {
    Some(
        totp(key)?
            .generate(step.checked_mul(STEP_SECONDS)?)
            .to_string(),
    )
}

/// The step within the drift window at which `code` is `key`'s, if any.
pub fn matching_step(key: &str, code: &str, unix_seconds: u64) -> Option<u64> {
    totp(key)?.check(code.trim(), unix_seconds)
}

/// The `otpauth://` URI an authenticator app scans (Google's Key URI format).
pub fn enrol_uri(issuer: &str, account: &str, key: &str) -> String {
    let label = format!("{issuer}:{account}");
    let query = serde_urlencoded::to_string([
        ("secret", key),
        ("issuer", issuer),
        ("algorithm", "SHA1"),
        ("digits", "6"),
        ("period", "30"),
    ])
    .unwrap_or_default();
    format!("otpauth://totp/{}?{query}", percent_encode(&label))
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The URI as a QR code image: an SVG data URL, rendered here (no outside service).
pub fn qr_data_url(uri: &str) -> Option<String> {
    use base64::Engine;
    let code = qrcode::QrCode::new(uri.as_bytes()).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 key, "12345678901234567890".
    fn rfc_key() -> String {
        BASE32_NOPAD.encode(b"12345678901234567890")
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(code_at_step(&BASE32_NOPAD.encode(b"short"), 1), None);
    }

    #[test]
    fn matches_the_rfc_6238_vectors() {
        // Appendix B lists eight digits; six are their last six.
        for (time, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                code_at_step(&rfc_key(), step_at(time)).unwrap(),
                eight[2..],
                "T={time}"
            );
        }
    }

    #[test]
    fn accepts_one_step_of_drift_and_no_more() {
        let key = rfc_key();
        let now = 1_234_567_890;
        let step = step_at(now);
        for (offset, accepted) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = code_at_step(&key, step.wrapping_add_signed(offset)).unwrap();
            assert_eq!(
                matching_step(&key, &code, now),
                accepted.then_some(step.wrapping_add_signed(offset)),
                "offset {offset}"
            );
        }
        assert_eq!(matching_step(&key, "12345", now), None);
        assert_eq!(matching_step(&key, "abcdef", now), None);
        assert_eq!(matching_step("not base32!", "123456", now), None);
    }

    #[test]
    fn new_keys_are_random_base32_and_uris_are_scannable() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(BASE32_NOPAD.decode(a.as_bytes()).unwrap().len(), KEY_BYTES);
        let uri = enrol_uri("fhirgate", "ann@example.com", &a);
        assert!(uri.starts_with("otpauth://totp/fhirgate%3Aann%40example.com?secret="));
        assert!(uri.contains("&issuer=fhirgate"));
        let qr = qr_data_url(&uri).unwrap();
        assert!(qr.starts_with("data:image/svg+xml;base64,"));
    }
}
