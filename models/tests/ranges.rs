//! Property tests of the numeric ranges negotiation intersects.

use meshwire_models::mechanism::{limits, Range};
use proptest::prelude::*;

proptest! {
    #[test]
    fn intersection_is_contained_in_both(a in 0u32..1000, b in 0u32..1000, c in 0u32..1000, d in 0u32..1000) {
        let x = Range::new(a.min(b), a.max(b));
        let y = Range::new(c.min(d), c.max(d));
        match x.intersect(&y) {
            Some(r) => {
                prop_assert!(x.contains(r.start) && x.contains(r.end));
                prop_assert!(y.contains(r.start) && y.contains(r.end));
                prop_assert_eq!(Some(r), y.intersect(&x));
            }
            None => prop_assert!(x.end < y.start || y.end < x.start),
        }
    }

    #[test]
    fn check_refuses_reversed_and_out_of_limit(a in 0u32..20_000_000, b in 0u32..20_000_000) {
        let r = Range::new(a, b);
        let ok = a <= b && limits::VNI.contains(a) && limits::VNI.contains(b);
        prop_assert_eq!(r.check(limits::VNI).is_ok(), ok);
    }
}
