//! LSEQ identifiers: a path of levels, each `(digit, site, counter)`, totally ordered,
//! with a compact, self-describing binary encoding (`schemas/IDENTIFIER.md`).

use std::fmt;

/// Deepest identifier accepted anywhere (allocation, decode, apply). Level `d` has base
/// `2^(5+d)`, so the deepest level's digits still fit in a `u64`.
pub const MAX_DEPTH: usize = 48;

/// A replica id: unique per editing session, chosen at random by the editor.
pub type SiteId = u64;

/// Base of level `depth` (0-based): 32, 64, 128, ….
pub const fn base(depth: usize) -> u64 {
    1 << (5 + depth)
}

/// One level of an identifier. Levels compare on `(digit, site, counter)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level {
    pub digit: u64,
    pub site: SiteId,
    pub counter: u64,
}

/// A position identifier. Compared level by level; a prefix sorts before its extensions.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ident(pub Vec<Level>);

/// Why bytes are not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("identifier is truncated")]
    Truncated,
    #[error("identifier has no levels")]
    Empty,
    #[error("identifier depth {depth} exceeds the limit max_ident_depth = {MAX_DEPTH}")]
    TooDeep { depth: u64 },
    #[error("digit at level {depth} is outside its base {}", base(*depth))]
    DigitOutOfBase { depth: usize },
    #[error("identifier site table is invalid ({sites} sites for {depth} levels)")]
    BadSiteTable { sites: u64, depth: usize },
    #[error("identifier site index {index} is outside its table")]
    BadSiteIndex { index: u64 },
    #[error("identifier varint is longer than 10 bytes")]
    VarintOverflow,
    #[error("identifier has {0} trailing bytes")]
    TrailingBytes(usize),
}

impl Ident {
    pub fn depth(&self) -> usize {
        self.0.len()
    }

    pub fn levels(&self) -> &[Level] {
        &self.0
    }

    /// The last level: its `(site, counter)` names the character globally.
    pub fn last(&self) -> Level {
        *self.0.last().expect("identifiers have at least one level")
    }

    /// Checks depth and digit ranges: what decode guarantees for received identifiers.
    pub fn validate(&self) -> Result<(), IdentError> {
        if self.0.is_empty() {
            return Err(IdentError::Empty);
        }
        if self.0.len() > MAX_DEPTH {
            return Err(IdentError::TooDeep { depth: self.0.len() as u64 });
        }
        match self.0.iter().enumerate().find(|(d, l)| l.digit >= base(*d)) {
            Some((depth, _)) => Err(IdentError::DigitOutOfBase { depth }),
            None => Ok(()),
        }
    }

    /// The identifier of the `i`-th character of a run that starts at `self`.
    pub fn run_member(&self, i: u64) -> Ident {
        let mut levels = self.0.clone();
        let last = levels.last_mut().expect("identifiers have at least one level");
        last.digit += i;
        last.counter += i;
        Ident(levels)
    }

    /// Appends the compact encoding (`schemas/IDENTIFIER.md`) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut sites: Vec<SiteId> = Vec::with_capacity(2);
        for level in &self.0 {
            if !sites.contains(&level.site) {
                sites.push(level.site);
            }
        }
        put_varint(out, self.0.len() as u64);
        put_varint(out, sites.len() as u64);
        for site in &sites {
            out.extend_from_slice(&site.to_le_bytes());
        }
        let mut previous_counter = 0u64;
        for (depth, level) in self.0.iter().enumerate() {
            put_varint(out, fold_digit(level.digit, depth));
            if sites.len() > 1 {
                let index = sites.iter().position(|s| *s == level.site).unwrap_or(0);
                put_varint(out, index as u64);
            }
            put_varint(out, level.counter.wrapping_sub(previous_counter));
            previous_counter = level.counter;
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * self.0.len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one identifier from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Ident, IdentError> {
        let mut ident = Ident(Vec::new());
        ident.decode_from(bytes)?;
        Ok(ident)
    }

    /// Decodes `bytes` into `self`, reusing its memory (the hot path of a decoder).
    pub fn decode_from(&mut self, bytes: &[u8]) -> Result<(), IdentError> {
        let mut reader = Reader { bytes, pos: 0 };
        reader.levels(&mut self.0)?;
        match bytes.len() - reader.pos {
            0 => Ok(()),
            n => Err(IdentError::TrailingBytes(n)),
        }
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}:{:x}.{}", l.digit, l.site, l.counter)?;
        }
        f.write_str("]")
    }
}

/// Folds a digit towards the nearer edge of its base: allocation happens within
/// `boundary` of a neighbour and exhausted levels sit at the top, so both ends are common.
fn fold_digit(digit: u64, depth: usize) -> u64 {
    let top = base(depth) - 1;
    if digit <= top / 2 { digit << 1 } else { ((top - digit) << 1) | 1 }
}

fn unfold_digit(folded: u64, depth: usize) -> Result<u64, IdentError> {
    let top = base(depth) - 1;
    let distance = folded >> 1;
    if distance > top / 2 {
        return Err(IdentError::DigitOutOfBase { depth });
    }
    Ok(if folded & 1 == 0 { distance } else { top - distance })
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, IdentError> {
        if let Some(&byte) = self.bytes.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self.bytes.get(self.pos).ok_or(IdentError::Truncated)?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(IdentError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(IdentError::VarintOverflow)
    }

    fn levels(&mut self, levels: &mut Vec<Level>) -> Result<(), IdentError> {
        levels.clear();
        let depth = self.varint()?;
        if depth == 0 {
            return Err(IdentError::Empty);
        }
        if depth > MAX_DEPTH as u64 {
            return Err(IdentError::TooDeep { depth });
        }
        let depth = depth as usize;
        let site_count = self.varint()?;
        if site_count == 0 || site_count > depth as u64 {
            return Err(IdentError::BadSiteTable { sites: site_count, depth });
        }
        let table_end = self.pos + 8 * site_count as usize;
        let sites = self.bytes.get(self.pos..table_end).ok_or(IdentError::Truncated)?;
        self.pos = table_end;
        let site_at = |i: usize| u64::from_le_bytes(sites[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        let only_site = site_at(0);
        levels.reserve(depth);
        let mut counter = 0u64;
        for d in 0..depth {
            let digit = unfold_digit(self.varint()?, d)?;
            let site = if site_count == 1 {
                only_site
            } else {
                let index = self.varint()?;
                if index >= site_count {
                    return Err(IdentError::BadSiteIndex { index });
                }
                site_at(index as usize)
            };
            counter = counter.wrapping_add(self.varint()?);
            levels.push(Level { digit, site, counter });
        }
        Ok(())
    }
}
