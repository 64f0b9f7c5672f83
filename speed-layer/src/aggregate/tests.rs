//! Partial aggregates against exact oracles.

use super::*;
use proptest::prelude::*;

fn fold(function: AggregateFunction, arg: ArgumentType, values: &[i64]) -> PartialAggregate {
    let mut acc = PartialAggregate::new(function, arg);
    for v in values {
        match arg {
            ArgumentType::Int64 => acc.update(Input::Int(*v)),
            _ => acc.update(Input::Float(*v as f64)),
        }
    }
    acc
}

const EXACT: [AggregateFunction; 5] = [
    AggregateFunction::Count,
    AggregateFunction::Sum,
    AggregateFunction::Min,
    AggregateFunction::Max,
    AggregateFunction::Avg,
];

/// The exact oracle, computed directly from the values.
fn oracle(function: AggregateFunction, values: &[i64]) -> Option<f64> {
    let n = values.len();
    match function {
        AggregateFunction::Count => Some(n as f64),
        _ if n == 0 => None,
        AggregateFunction::Sum => Some(values.iter().sum::<i64>() as f64),
        AggregateFunction::Min => values.iter().min().map(|v| *v as f64),
        AggregateFunction::Max => values.iter().max().map(|v| *v as f64),
        AggregateFunction::Avg => Some(values.iter().sum::<i64>() as f64 / n as f64),
        _ => unreachable!(),
    }
}

#[test]
fn error_bounds_are_the_sketches_own() {
    let Some(ErrorBound::RelativeStandardError(rse)) =
        error_bound(AggregateFunction::CountDistinct)
    else {
        panic!("distinct counts have a relative standard error");
    };
    assert!((rse - 0.008125).abs() < 1e-6, "{rse}");
    let Some(ErrorBound::RankError(e)) = error_bound(AggregateFunction::Percentile { q: 0.5 })
    else {
        panic!("percentiles have a rank error");
    };
    assert!(e > 0.001 && e < 0.01, "{e}");
    assert_eq!(error_bound(AggregateFunction::Sum), None);
}

#[test]
fn sql_semantics_for_nulls_and_empty_input() {
    let mut sum = PartialAggregate::new(AggregateFunction::Sum, ArgumentType::Float64);
    assert_eq!(sum.evaluate(), AggregateValue::Null);
    sum.update(Input::Null);
    assert_eq!(sum.evaluate(), AggregateValue::Null);
    let mut count = PartialAggregate::new(AggregateFunction::Count, ArgumentType::Float64);
    count.update(Input::Null);
    count.update(Input::Float(1.0));
    assert_eq!(count.evaluate(), AggregateValue::Int(1));
    count.update_row();
    assert_eq!(count.evaluate(), AggregateValue::Int(2));
    let avg = PartialAggregate::new(AggregateFunction::Avg, ArgumentType::Int64);
    assert_eq!(avg.evaluate(), AggregateValue::Null);
}

#[test]
fn result_types_follow_the_argument() {
    let s = fold(AggregateFunction::Sum, ArgumentType::Int64, &[1, 2]);
    assert_eq!(s.evaluate(), AggregateValue::Int(3));
    let s = fold(AggregateFunction::Sum, ArgumentType::Float64, &[1, 2]);
    assert_eq!(s.evaluate(), AggregateValue::Float(3.0));
    let a = fold(AggregateFunction::Avg, ArgumentType::Int64, &[1, 2]);
    assert_eq!(a.evaluate(), AggregateValue::Float(1.5));
}

#[test]
fn mismatched_merges_are_errors() {
    let mut a = PartialAggregate::new(AggregateFunction::Sum, ArgumentType::Int64);
    let b = PartialAggregate::new(AggregateFunction::Max, ArgumentType::Int64);
    assert!(matches!(a.merge(&b), Err(Error::Mismatch { .. })));
}

proptest! {
    /// Merging the partials of any split equals aggregating the whole, which equals the oracle.
    #[test]
    fn merge_of_parts_equals_aggregate_of_whole(
        values in proptest::collection::vec(-1_000_000i64..1_000_000, 0..200),
        cut in 0usize..200,
    ) {
        let cut = cut.min(values.len());
        for function in EXACT {
            for arg in [ArgumentType::Int64, ArgumentType::Float64] {
                let whole = fold(function, arg, &values);
                let mut left = fold(function, arg, &values[..cut]);
                left.merge(&fold(function, arg, &values[cut..])).unwrap();
                prop_assert_eq!(left.evaluate().as_f64(), whole.evaluate().as_f64());
                prop_assert_eq!(whole.evaluate().as_f64(), oracle(function, &values));
            }
        }
    }

    #[test]
    fn merge_is_commutative_and_associative(
        a in proptest::collection::vec(-1000i64..1000, 0..50),
        b in proptest::collection::vec(-1000i64..1000, 0..50),
        c in proptest::collection::vec(-1000i64..1000, 0..50),
    ) {
        for function in EXACT {
            let p = |v: &[i64]| fold(function, ArgumentType::Int64, v);
            let mut ab = p(&a);
            ab.merge(&p(&b)).unwrap();
            let mut ba = p(&b);
            ba.merge(&p(&a)).unwrap();
            prop_assert_eq!(ab.evaluate(), ba.evaluate());
            let mut ab_c = ab.clone();
            ab_c.merge(&p(&c)).unwrap();
            let mut bc = p(&b);
            bc.merge(&p(&c)).unwrap();
            let mut a_bc = p(&a);
            a_bc.merge(&bc).unwrap();
            prop_assert_eq!(ab_c.evaluate(), a_bc.evaluate());
        }
    }

    /// HyperLogLog: merge is commutative, and merging sketches of any split of the input
    /// estimates the whole input within the error bound.
    #[test]
    fn distinct_merge_of_parts_equals_the_whole(
        values in proptest::collection::vec(0i64..50_000, 0..3_000),
        cut in 0usize..3_000,
    ) {
        let cut = cut.min(values.len());
        let whole = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values);
        let left = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values[..cut]);
        let right = fold(AggregateFunction::CountDistinct, ArgumentType::Int64, &values[cut..]);
        let mut lr = left.clone();
        lr.merge(&right).unwrap();
        let mut rl = right.clone();
        rl.merge(&left).unwrap();
        prop_assert_eq!(lr.evaluate(), rl.evaluate());
        let exact = values.iter().collect::<std::collections::HashSet<_>>().len() as f64;
        for est in [whole.evaluate(), lr.evaluate()] {
            let est = est.as_f64().unwrap();
            // 3 sigma of the 0.81% relative standard error, plus one for tiny sets.
            prop_assert!((est - exact).abs() <= 0.0243 * exact + 1.0, "estimate {est}, exact {exact}");
        }
    }

    /// KLL: the merge of parts answers within the rank error bound of the whole.
    #[test]
    fn percentile_merge_of_parts_stays_within_rank_error(
        values in proptest::collection::vec(-1e6f64..1e6, 1..5_000),
        cut in 0usize..5_000,
        q in 0.0f64..=1.0,
    ) {
        let cut = cut.min(values.len());
        let part = |v: &[f64]| {
            let mut acc = PartialAggregate::new(AggregateFunction::Percentile { q }, ArgumentType::Float64);
            for x in v {
                acc.update(Input::Float(*x));
            }
            acc
        };
        let mut merged = part(&values[..cut]);
        merged.merge(&part(&values[cut..])).unwrap();
        let est = merged.evaluate().as_f64().unwrap();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank_lo = sorted.partition_point(|x| *x < est) as f64 / sorted.len() as f64;
        let rank_hi = sorted.partition_point(|x| *x <= est) as f64 / sorted.len() as f64;
        prop_assert!(rank_lo - 0.01 <= q && q <= rank_hi + 0.01, "q {q}: estimate {est} has rank [{rank_lo}, {rank_hi}]");
    }

    #[test]
    fn state_survives_a_byte_round_trip(
        values in proptest::collection::vec(-1000i64..1000, 0..100),
    ) {
        for function in EXACT.into_iter().chain([
            AggregateFunction::CountDistinct,
            AggregateFunction::Percentile { q: 0.5 },
        ]) {
            for arg in [ArgumentType::Int64, ArgumentType::Float64] {
                let acc = fold(function, arg, &values);
                let back = PartialAggregate::from_bytes(&acc.to_bytes()).unwrap();
                prop_assert_eq!(back.evaluate(), acc.evaluate());
            }
        }
    }
}

/// Error bounds against an exact oracle over 10^6 items, with the input split over 8 partial
/// states (as partitions are) and merged.
#[test]
fn sketches_meet_their_error_bounds_over_a_million_items() {
    const N: i64 = 1_000_000;
    const PARTS: i64 = 8;
    // Distinct: 10^6 distinct values, each seen twice, hashed through a random-looking map.
    let mut parts: Vec<PartialAggregate> = (0..PARTS)
        .map(|_| PartialAggregate::new(AggregateFunction::CountDistinct, ArgumentType::Int64))
        .collect();
    for i in 0..2 * N {
        let v = (i % N).wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64);
        parts[(i % PARTS) as usize].update(Input::Int(v));
    }
    let mut distinct = parts.remove(0);
    for p in &parts {
        distinct.merge(p).unwrap();
    }
    let est = distinct.evaluate().as_f64().unwrap();
    let err = (est - N as f64).abs() / N as f64;
    // lg_k = 14: relative standard error 0.81%; 3 sigma.
    assert!(
        err <= 3.0 * 0.0081,
        "distinct estimate {est} for {N}: error {err}"
    );

    // Percentiles: a skewed distribution (squares of a permutation), exact ranks known.
    let mut parts: Vec<PartialAggregate> = (0..PARTS)
        .map(|_| {
            PartialAggregate::new(
                AggregateFunction::Percentile { q: 0.0 },
                ArgumentType::Float64,
            )
        })
        .collect();
    for i in 0..N {
        let v = ((i * 7_919) % N) as f64;
        parts[(i % PARTS) as usize].update(Input::Float(v * v));
    }
    let mut merged = parts.remove(0);
    for p in &parts {
        merged.merge(p).unwrap();
    }
    for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
        let PartialAggregate::Percentile { sketch, .. } = &merged else {
            unreachable!()
        };
        let est = sketch
            .quantile(q, SearchCriteria::Inclusive)
            .unwrap()
            .unwrap()
            .into_inner();
        // Values are the squares of 0..N, so the rank of `est` is sqrt(est) / N.
        let rank = (est.sqrt().floor() + 1.0) / N as f64;
        assert!(
            (rank - q).abs() <= 0.01,
            "q {q}: estimate {est} has rank {rank}"
        );
    }
}

fn decimal(function: AggregateFunction, units: &[i128]) -> PartialAggregate {
    let mut acc = PartialAggregate::new(
        function,
        ArgumentType::Decimal {
            precision: 12,
            scale: 2,
        },
    );
    for u in units {
        acc.update(Input::Decimal(*u));
    }
    acc
}

#[test]
fn decimal_states_are_exact_and_keep_the_enum_small() {
    assert_eq!(std::mem::size_of::<PartialAggregate>(), 24);
    let cents = |u: i128, s: i8| AggregateValue::Decimal(Decimal::new(u, s));
    let values = [1_034_478, -250, 10, 99_999_999_999];
    assert_eq!(
        decimal(AggregateFunction::Sum, &values).evaluate(),
        cents(100_001_034_237, 2)
    );
    assert_eq!(
        decimal(AggregateFunction::Min, &values).evaluate(),
        cents(-250, 2)
    );
    assert_eq!(
        decimal(AggregateFunction::Max, &values).evaluate(),
        cents(99_999_999_999, 2)
    );
    // avg: scale 2 + 4, the exact mean truncated toward zero (DataFusion's).
    assert_eq!(
        decimal(AggregateFunction::Avg, &[100, 100, 101]).evaluate(),
        cents(1_003_333, 6)
    );
    assert_eq!(
        decimal(AggregateFunction::Avg, &[-100, -101]).evaluate(),
        cents(-1_005_000, 6)
    );
    assert_eq!(
        decimal(AggregateFunction::Sum, &[]).evaluate(),
        AggregateValue::Null
    );
    // Units survive the two-word packing, at both ends of the range.
    for v in [0, -1, 1, i128::MIN, i128::MAX, 1 << 64, -(1 << 64)] {
        assert_eq!(Units::new(v).get(), v);
    }
}

#[test]
fn a_decimal_sum_past_38_digits_is_null_not_wrong() {
    let nines = 10i128.pow(38) - 1;
    let acc = decimal(AggregateFunction::Sum, &[nines, 1]);
    assert_eq!(acc.evaluate(), AggregateValue::Null);
    let mut merged = decimal(AggregateFunction::Sum, &[5]);
    merged.merge(&acc).unwrap();
    assert_eq!(merged.evaluate(), AggregateValue::Null);
}

proptest! {
    /// Merging the partials of any split equals folding everything, and every state survives
    /// its checkpoint bytes, for each decimal aggregate.
    #[test]
    fn decimal_partials_merge_and_round_trip(
        values in proptest::collection::vec(-10i128.pow(12)..10i128.pow(12), 0..60),
        split in 0usize..60,
    ) {
        let split = split.min(values.len());
        for f in [
            AggregateFunction::Sum,
            AggregateFunction::Min,
            AggregateFunction::Max,
            AggregateFunction::Avg,
        ] {
            let whole = decimal(f, &values);
            let mut left = decimal(f, &values[..split]);
            left.merge(&decimal(f, &values[split..])).unwrap();
            prop_assert_eq!(left.evaluate(), whole.evaluate());
            let back = PartialAggregate::from_bytes(&whole.to_bytes()).unwrap();
            prop_assert_eq!(back.evaluate(), whole.evaluate());
            let exact: i128 = values.iter().sum();
            if f == AggregateFunction::Sum && !values.is_empty() {
                prop_assert_eq!(whole.evaluate(), AggregateValue::Decimal(Decimal::new(exact, 2)));
            }
        }
    }
}
