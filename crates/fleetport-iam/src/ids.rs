//! IAM's identifiers: unique IDs with their type prefix (`AIDA` user, `ANPA` policy), access
//! key IDs that encode their account the way AWS's do (so the account can be read off a key, as
//! `sts:GetAccessKeyInfo` does), and secrets.

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// The base32 decoding of `QAAAAAAA`: AWS adds it to half the account number.
const ACCOUNT_OFFSET: u64 = 549_755_813_888;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    out.truncate(n);
    out
}

fn random_base32(n: usize) -> String {
    random_bytes(n)
        .into_iter()
        .map(|b| BASE32[usize::from(b) % 32] as char)
        .collect()
}

/// A unique ID such as `AIDA…` (21 characters).
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}{}", random_base32(17))
}

/// A 20-character access key ID (`AKIA…`, `ASIA…`) whose characters 4–12 carry the account.
pub fn access_key_id(prefix: &str, account: &str) -> String {
    let account: u64 = account.parse().unwrap_or(0);
    let n = account / 2 + ACCOUNT_OFFSET;
    let mut encoded = String::with_capacity(8);
    for i in (0..8).rev() {
        encoded.push(BASE32[((n >> (i * 5)) & 31) as usize] as char);
    }
    let half = random_bytes(1)[0] % 16;
    let c12 = BASE32[usize::from(half + if account % 2 == 1 { 16 } else { 0 })] as char;
    format!("{prefix}{encoded}{c12}{}", random_base32(7))
}

/// The account an access key ID encodes (`GetAccessKeyInfo`).
pub fn account_of_key(key: &str) -> Option<String> {
    let b = key.as_bytes();
    if b.len() < 13 {
        return None;
    }
    let index = |c: u8| BASE32.iter().position(|x| *x == c).map(|i| i as u64);
    let mut n = 0u64;
    for &c in &b[4..12] {
        n = (n << 5) | index(c)?;
    }
    let odd = index(b[12])? >= 16;
    let account = 2 * n.checked_sub(ACCOUNT_OFFSET)? + u64::from(odd);
    Some(format!("{account:012}"))
}

/// A 40-character secret access key.
pub fn secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    random_bytes(40)
        .into_iter()
        .map(|b| ALPHABET[usize::from(b) % 64] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_account() {
        assert_eq!(
            account_of_key("AKIARZPUZDIKGB2VALC4").as_deref(),
            Some("123456789012")
        );
        assert_eq!(
            account_of_key("ASIAQAAAAAAAGMKEM7X5").as_deref(),
            Some("000000000000")
        );
        for account in [
            "000000000000",
            "123456789012",
            "111111111111",
            "999999999999",
        ] {
            let k = access_key_id("AKIA", account);
            assert_eq!(k.len(), 20);
            assert!(k.starts_with("AKIA"));
            assert_eq!(account_of_key(&k).as_deref(), Some(account));
        }
        assert_eq!(secret().len(), 40);
        assert_eq!(unique_id("AIDA").len(), 21);
    }
}
