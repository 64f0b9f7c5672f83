//! The batch layer on Apache DataFusion Ballista (a standalone scheduler and executor started in
//! this process from Tandem's session state): every view of the oracle test recomputed on
//! Ballista agrees with the oracle exactly as the in-process engine does, and with the
//! in-process engine's published rows. Built only with the `ballista` feature.

use tandem_batch_layer::recompute::Engine;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recomputing_on_ballista_equals_the_in_process_engine_and_the_oracle() {
    let events = events(4_000);
    let schema = schema();
    let cases = cases(&events);
    let published = |engine: Engine| {
        let schema = Arc::clone(&schema);
        let views: Vec<ViewDefinition> = cases.iter().map(|c| c.view.clone()).collect();
        let events = events.clone();
        async move {
            let (_, store) = archived(&schema, &events).await;
            let catalog = Arc::new(ViewCatalog::new(Arc::clone(&store), views.clone()));
            let recompute = recompute(&store, &schema, &catalog).with_engine(engine);
            let mut out = BTreeMap::new();
            for view in &views {
                let outcome = recompute
                    .run_view(
                        view,
                        Requested::default(),
                        &format!("job-{}", view.name),
                        &CancellationToken::new(),
                        &|_| {},
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", view.name));
                let covered = outcome.covered.expect("some windows are ready");
                let published = catalog.get(&view.name).unwrap();
                out.insert(
                    view.name.clone(),
                    (covered, catalog.rows(&published, ALL).await.unwrap()),
                );
            }
            out
        }
    };
    let local = published(Engine::DataFusion).await;
    let remote = published(Engine::Ballista { url: None }).await;
    for case in &cases {
        let name = &case.view.name;
        let (covered, rows) = &remote[name];
        let n = compare(name, "batch", rows, &case.oracle, Some(*covered));
        assert!(n >= 10, "{name}: only {n} windows compared on Ballista");
        let (local_covered, local_rows) = &local[name];
        assert_eq!(covered, local_covered, "{name}: coverage");
        let keys = |rows: &[tandem_shared::row::ViewRow]| {
            rows.iter()
                .map(|r| (r.window, r.group.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(rows), keys(local_rows), "{name}: windows and groups");
        // Float sums may differ in their last bits (both engines add in parallel); integers and
        // everything else must be equal.
        for (a, b) in rows.iter().zip(local_rows) {
            for (x, y) in a.values.iter().zip(&b.values) {
                match (x, y) {
                    (AggregateValue::Float(x), AggregateValue::Float(y)) => {
                        assert!(
                            (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                            "{name}: {x} vs {y}"
                        )
                    }
                    _ => assert_eq!(x, y, "{name}"),
                }
            }
        }
    }
}
