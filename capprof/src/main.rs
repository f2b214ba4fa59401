use capprof::{
    checks::CheckTable,
    collector::{CheckSource, KernelCollector},
    kallsyms::KernelSymbols,
    loader::{Tracer, TracerOptions},
};
fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut tracer = Tracer::load(&TracerOptions::default())?;
    println!("{}", tracer.attach_choice().explain());
    let mut collector = KernelCollector::new(&mut tracer)?;
    let mut table = CheckTable::new(KernelSymbols::load()?);
    std::thread::sleep(std::time::Duration::from_secs(
        std::env::args()
            .nth(1)
            .map(|s| s.parse().unwrap())
            .unwrap_or(3),
    ));
    let c = collector.collect()?;
    table.apply(c, &mut collector)?;
    for r in table.records() {
        println!(
            "{} {} {:?} {} {} {:?} {:?}",
            r.cgroup_id(),
            r.capability_name(),
            r.verdict(),
            r.syscall_name(),
            r.count,
            r.first_sighting().map(|s| &s.comm),
            r.call_sites.first().map(|c| c.stack.clone())
        );
    }
    println!("{:?}", table.counters());
    Ok(())
}
