pub fn run(
    _c: crate::config::Config,
    _p: crate::policy::Policy,
    _g: std::time::Duration,
) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
