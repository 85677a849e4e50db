//! Kubernetes resource quantities parsed to an exact value, for comparison by value
//! (`resource.Quantity.Cmp`). Only what comparison needs: parsing and equality.

use std::str::FromStr;

/// An exact quantity: `mantissa × 10^exp10 × 2^exp2` normalised so that equal values compare
/// equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantity {
    /// Value in nano-units (10^-9), which is exact for every suffix Kubernetes accepts within
    /// the range this type can hold.
    nanos: i128,
}

/// A string that is not a valid quantity, or one too large to compare exactly.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(split);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(QuantityError);
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{int_part}{frac_part}");
        let mut mantissa: i128 = 0;
        for d in digits.bytes() {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(d - b'0')))
                .ok_or(QuantityError)?;
        }
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| QuantityError)?;
        let (exp10, exp2) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            s if s.starts_with(['e', 'E']) => {
                (s[1..].parse::<i32>().map_err(|_| QuantityError)?, 0)
            }
            _ => return Err(QuantityError),
        };
        // nanos = mantissa × 10^(exp10 - frac_len + 9) × 2^exp2
        let scale = exp10 - frac_len + 9;
        let mut nanos = mantissa;
        if scale >= 0 {
            for _ in 0..scale {
                nanos = nanos.checked_mul(10).ok_or(QuantityError)?;
            }
        } else {
            for _ in 0..(-scale) {
                // Kubernetes rounds sub-nano precision up; exact comparison only needs a
                // consistent rule.
                nanos = (nanos + 9) / 10;
            }
        }
        nanos = nanos.checked_mul(1i128 << exp2).ok_or(QuantityError)?;
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn suffixes() {
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1k"), q("1000"));
        assert_eq!(q("500m"), q("0.5"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("+2"), q("2"));
        assert_ne!(q("1G"), q("1Gi"));
        assert_ne!(q("-1"), q("1"));
    }

    #[test]
    fn invalid() {
        for s in ["", "abc", "1Xi", "1..2", "."] {
            assert!(s.parse::<Quantity>().is_err(), "{s}");
        }
    }
}
