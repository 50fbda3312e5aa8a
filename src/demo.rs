pub fn run(
    _c: Option<&std::path::Path>,
    _w: u32,
    _s: u32,
    _l: &str,
    _g: std::time::Duration,
) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
