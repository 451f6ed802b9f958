//! JSON mapping of identifiers: a level is `[digit, "site in hex", counter]`, so 64-bit
//! sites survive JavaScript numbers.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ident::{Ident, Level};

pub(super) mod site_hex {
    use super::*;

    pub fn serialize<S: Serializer>(site: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{site:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        u64::from_str_radix(&text, 16)
            .map_err(|e| D::Error::custom(format!("site {text:?} is not 16 hex digits: {e}")))
    }
}

#[derive(Serialize, Deserialize)]
struct LevelJson(u64, #[serde(with = "site_hex")] u64, u64);

impl Serialize for Ident {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|l| LevelJson(l.digit, l.site, l.counter)))
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ident, D::Error> {
        let levels = Vec::<LevelJson>::deserialize(d)?;
        Ok(Ident(
            levels
                .into_iter()
                .map(|LevelJson(digit, site, counter)| Level { digit, site, counter })
                .collect(),
        ))
    }
}
