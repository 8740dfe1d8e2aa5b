//! Value parsers for numeric flags whose type admits values that make no sense: clap refuses
//! those naming the flag, the value and the valid range
//! (`invalid value '-1' for '--temperature <TEMPERATURE>': must be a number of at least 0`).

use std::fmt::Display;
use std::str::FromStr;

/// A count of at least 1 (tokens to generate, a batch size, a padding multiple).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    let n: usize = parse(text)?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

/// A finite number of at least 0 (a temperature, a tolerance).
pub fn non_negative<T: FromStr + Into<f64> + Copy>(text: &str) -> Result<T, String>
where
    T::Err: Display,
{
    let x: T = parse(text)?;
    if !(x.into().is_finite() && x.into() >= 0.0) {
        return Err("must be a number of at least 0".into());
    }
    Ok(x)
}

/// A probability mass in (0, 1] (`--top-p`).
pub fn mass(text: &str) -> Result<f32, String> {
    let p: f32 = parse(text)?;
    if !(p > 0.0 && p <= 1.0) {
        return Err("must be in (0, 1]".into());
    }
    Ok(p)
}

fn parse<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: Display,
{
    text.parse().map_err(|e: T::Err| e.to_string())
}
