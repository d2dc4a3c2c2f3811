//! Normalisation and validation of single values at the edge. Each function
//! returns the canonical form or a description of what is wrong; callers
//! attach the field path.

/// Longest free-text value accepted in a contact or deal field.
pub const MAX_TEXT: usize = 512;
/// Most tags, labels or list entries on one contact.
pub const MAX_SET: usize = 200;
/// Longest tag or list entry.
pub const MAX_TAG: usize = 128;

/// Trims free text and checks its length and characters. Empty means unset.
pub fn text(s: &str) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} characters"));
    }
    if t.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains control characters".into());
    }
    Ok(Some(t.to_string()))
}

/// A lower-case identifier: `[a-z][a-z0-9_]{0,62}`. Upper case is folded,
/// and spaces and dashes become underscores ("Too expensive" → "too_expensive").
pub fn identifier(s: &str) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let folded: String = t
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if is_identifier(&folded) {
        Ok(Some(folded))
    } else {
        Err(format!(
            "`{t}` is not an identifier (a letter, then letters, digits or underscores, at most 63)"
        ))
    }
}

/// True for `[a-z][a-z0-9_]{0,62}`.
pub fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A syntactically valid email address, trimmed and lower-cased.
pub fn email(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().to_lowercase();
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || format!("`{}` is not a valid email address", s.trim());
    if t.len() > 254 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = t.rsplit_once('@').ok_or_else(bad)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return Err(bad());
    }
    Ok(Some(t))
}

/// A phone number: digits with an optional leading `+`; spaces, dots,
/// dashes and parentheses are removed. 5 to 15 digits.
pub fn phone(s: &str) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let mut out = String::new();
    for (i, c) in t.chars().enumerate() {
        match c {
            '+' if i == 0 => out.push('+'),
            '0'..='9' => out.push(c),
            ' ' | '.' | '-' | '(' | ')' => {}
            _ => return Err(format!("`{t}` is not a phone number")),
        }
    }
    let digits = out.trim_start_matches('+').len();
    if !(5..=15).contains(&digits) {
        return Err(format!("`{t}` must have 5 to 15 digits"));
    }
    Ok(Some(out))
}

/// An ISO 3166-1 alpha-2 country code, upper-cased.
pub fn country(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().to_ascii_uppercase();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() == 2 && ISO_COUNTRIES.split(' ').any(|c| c == t) {
        Ok(Some(t))
    } else {
        Err(format!(
            "`{}` is not an ISO 3166-1 alpha-2 country code",
            s.trim()
        ))
    }
}

/// A BCP 47 language tag such as `en` or `pt-BR`, in canonical case.
pub fn locale(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().replace('_', "-");
    if t.is_empty() {
        return Ok(None);
    }
    let mut parts = t.split('-');
    let lang = parts.next().unwrap_or_default();
    if !(2..=3).contains(&lang.len()) || !lang.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("`{t}` is not a locale like en or pt-BR"));
    }
    let mut out = lang.to_ascii_lowercase();
    for p in parts {
        if p.is_empty() || p.len() > 8 || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("`{t}` is not a locale like en or pt-BR"));
        }
        out.push('-');
        if p.len() == 2 {
            out.push_str(&p.to_ascii_uppercase());
        } else {
            out.push_str(p);
        }
    }
    Ok(Some(out))
}

/// An ISO 4217 currency code, upper-cased.
pub fn currency(s: &str) -> Result<Option<String>, String> {
    let t = s.trim().to_ascii_uppercase();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() == 3 && t.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(Some(t))
    } else {
        Err(format!("`{}` is not an ISO 4217 currency code", s.trim()))
    }
}

/// Lower-cased free text (for gender).
pub fn lower_text(s: &str) -> Result<Option<String>, String> {
    Ok(text(s)?.map(|t| t.to_lowercase()))
}

/// A set of tags: each trimmed, non-empty, at most [`MAX_TAG`] characters,
/// deduplicated and sorted.
pub fn tag_set(items: &[String]) -> Result<Vec<String>, String> {
    if items.len() > MAX_SET {
        return Err(format!("more than {MAX_SET} entries"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, raw) in items.iter().enumerate() {
        let t = raw.trim();
        if t.is_empty() || t.chars().count() > MAX_TAG || t.chars().any(char::is_control) {
            return Err(format!(
                "entry {i} must be 1 to {MAX_TAG} characters without control characters"
            ));
        }
        out.push(t.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A finite number.
pub fn finite(x: f64) -> Result<f64, String> {
    if x.is_finite() {
        Ok(x)
    } else {
        Err("must be a finite number".into())
    }
}

/// A date as `YYYY-MM-DD`.
pub fn date(s: &str) -> Result<Option<chrono::NaiveDate>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .map_err(|_| format!("`{t}` is not a date as YYYY-MM-DD"))
        .and_then(date_in_range)
        .map(Some)
}

/// A date segd can store and compare everywhere: years 1 to 9999. chrono
/// reads year 0, which PostgreSQL's date input refuses, so one such value in
/// a custom field would break every query that reads the field.
pub fn date_in_range(d: chrono::NaiveDate) -> Result<chrono::NaiveDate, String> {
    use chrono::Datelike;
    if (1..=9999).contains(&d.year()) {
        Ok(d)
    } else {
        Err(format!("{d} is out of range; years 1 to 9999"))
    }
}

const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_stay_within_years_1_to_9999() {
        assert!(date("2024-02-29").unwrap().is_some());
        assert!(date("0001-01-01").unwrap().is_some());
        assert!(
            date("0000-06-01").is_err(),
            "year 0 parses in chrono, not in PostgreSQL"
        );
        assert!(date("-0001-06-01").is_err());
        assert!(date("2024-02-30").is_err());
    }

    #[test]
    fn emails_normalise_and_reject() {
        assert_eq!(
            email("  Ann@Example.COM "),
            Ok(Some("ann@example.com".into()))
        );
        assert_eq!(email(""), Ok(None));
        for bad in [
            "ann",
            "ann@",
            "@x.com",
            "a b@x.com",
            "a@x",
            "a@.x.com",
            "a@x..com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_countries_locales() {
        assert_eq!(phone("+1 (555) 010-9999"), Ok(Some("+15550109999".into())));
        assert!(phone("call me").is_err());
        assert!(phone("12").is_err());
        assert_eq!(country("us"), Ok(Some("US".into())));
        assert!(country("XX").is_err());
        assert_eq!(locale("pt_br"), Ok(Some("pt-BR".into())));
        assert!(locale("english!").is_err());
    }

    #[test]
    fn identifiers_fold() {
        assert_eq!(
            identifier("Too Expensive"),
            Ok(Some("too_expensive".into()))
        );
        assert_eq!(identifier("in-progress"), Ok(Some("in_progress".into())));
        assert!(identifier("1abc").is_err());
        assert!(identifier("a;drop").is_err());
    }

    #[test]
    fn tags_dedupe_sort() {
        let t = tag_set(&["b".into(), " a ".into(), "b".into()]).unwrap();
        assert_eq!(t, vec!["a".to_string(), "b".to_string()]);
        assert!(tag_set(&["".into()]).is_err());
    }
}
