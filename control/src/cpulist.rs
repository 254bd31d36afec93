//! The kernel's list syntax (`"0-3,8-11"`), which the config's `vfs` and `cores` use too.

/// `"0-3,8-11"` → 0, 1, 2, 3, 8, 9, 10, 11 (what the kernel writes in `cpulist` files).
pub fn parse_cpulist(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                    out.extend(a..=b.min(a.saturating_add(4096)));
                }
            }
            None => out.extend(part.trim().parse::<u32>().ok()),
        }
    }
    out
}
