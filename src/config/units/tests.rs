use proptest::prelude::*;

use super::*;

#[test]
fn durations() {
    assert_eq!("30s".parse::<HumanDuration>().unwrap().0, Duration::from_secs(30));
    assert_eq!(
        "10m".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(600)
    );
    assert_eq!(
        "14d".parse::<HumanDuration>().unwrap().0,
        Duration::from_secs(14 * 86400)
    );
    assert!("ten minutes".parse::<HumanDuration>().is_err());
}

#[test]
fn durations_over_the_maximum_are_refused_with_the_maximum_named() {
    let e = "500000000000y".parse::<HumanDuration>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "duration `500000000000y` is too long: at most `10years` is allowed here"
    );
    assert_eq!(
        "10y".parse::<DurationAtMost<{ limits::RETENTION }>>().unwrap().0,
        Duration::from_secs(10 * limits::YEAR)
    );
    assert!("10y 1s".parse::<DurationAtMost<{ limits::RETENTION }>>().is_err());
    assert!(
        "1day"
            .parse::<DurationAtMost<{ limits::REQUEST_TIMEOUT }>>()
            .is_ok()
    );
    let e = "25h"
        .parse::<DurationAtMost<{ limits::REQUEST_TIMEOUT }>>()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "duration `25h` is too long: at most `1day` is allowed here"
    );
}

#[test]
fn overflowing_durations_are_errors() {
    // 2^64 seconds: humantime itself refuses the sum; for us it is too long.
    assert!(matches!(
        "18446744073709551616s".parse::<HumanDuration>(),
        Err(UnitError::DurationTooLong { .. })
    ));
    assert!("9223372036854775808s".parse::<HumanDuration>().is_err());
}

#[test]
fn long_values_are_cut_short_in_messages() {
    let long = "9".repeat(5000) + "s";
    let message = long.parse::<HumanDuration>().unwrap_err().to_string();
    assert!(message.len() < 300, "{message}");
    assert!(message.contains("9999…"), "{message}");
}

#[test]
fn sizes() {
    assert_eq!("25MiB".parse::<ByteSize>().unwrap().0, 25 * 1024 * 1024);
    assert_eq!("1MB".parse::<ByteSize>().unwrap().0, 1_000_000);
    assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
    assert_eq!("1.5 KiB".parse::<ByteSize>().unwrap().0, 1536);
    assert_eq!(".5k".parse::<ByteSize>().unwrap().0, 500);
    assert_eq!("64GiB".parse::<ByteSize>().unwrap().0, limits::SIZE);
    assert!("lots".parse::<ByteSize>().is_err());
    assert!("1.2.3MiB".parse::<ByteSize>().is_err());
    assert!(".".parse::<ByteSize>().is_err());
    assert!("MiB".parse::<ByteSize>().is_err());
}

#[test]
fn sizes_over_the_maximum_are_refused() {
    let e = "99999999999999999999EiB".parse::<ByteSize>().unwrap_err();
    assert!(matches!(e, UnitError::SizeTooLarge { .. }), "{e}");
    assert!(matches!(
        parse_size("17EiB", u64::MAX),
        Err(UnitError::SizeTooLarge { .. })
    ));
    let e = "65GiB".parse::<ByteSize>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "size `65GiB` is too large: at most `64.0 GiB` is allowed here"
    );
    assert_eq!(parse_size("1GiB", limits::MAX_BODY), Ok(limits::GIB));
    assert!(parse_size("1025MiB", limits::MAX_BODY).is_err());
}

#[test]
fn sizes_from_toml_integers_are_bounded_too() {
    #[derive(Deserialize)]
    struct T {
        s: SizeAtMost<{ limits::MAX_BODY }>,
    }
    let t: T = toml::from_str("s = 1024").unwrap();
    assert_eq!(t.s.0, 1024);
    let e = toml::from_str::<T>("s = 9223372036854775807").err().unwrap();
    assert!(e.message().contains("too large"), "{e}");
}

proptest! {
    /// Any text: a duration within the maximum, or an error; never a panic.
    #[test]
    fn any_text_as_a_duration(s in "\\PC{0,40}") {
        if let Ok(d) = s.parse::<DurationAtMost<{ limits::REQUEST_TIMEOUT }>>() {
            prop_assert!(d.0 <= Duration::from_secs(limits::REQUEST_TIMEOUT));
        }
    }

    /// Numbers of every size with every unit, alone and combined.
    #[test]
    fn any_number_of_any_unit_as_a_duration(
        a in any::<u64>(), b in any::<u64>(),
        u in "(ns|us|ms|s|m|h|d|w|M|y)", v in "(ns|us|ms|s|m|h|d|w|M|y)",
    ) {
        for s in [format!("{a}{u}"), format!("{a}{u} {b}{v}"), format!("{}{u}", a % 1000)] {
            match s.parse::<HumanDuration>() {
                Ok(d) => {
                    prop_assert!(d.0 <= Duration::from_secs(limits::DURATION));
                    // What the daemon does with it must not overflow either.
                    prop_assert!(std::time::SystemTime::now().checked_add(d.0 * 2).is_some());
                }
                Err(e) => prop_assert!(matches!(e, UnitError::DurationTooLong { .. }), "{e}"),
            }
        }
    }

    /// Any text: a size within the maximum, or an error; never a panic.
    #[test]
    fn any_text_as_a_size(s in "\\PC{0,40}") {
        if let Ok(n) = s.parse::<ByteSize>() {
            prop_assert!(n.0 <= limits::SIZE);
        }
    }

    /// Sizes that look right: exact when whole, bounded always.
    #[test]
    fn any_number_of_any_size_unit(
        whole in any::<u64>(), fraction in "[0-9]{0,25}",
        unit in "(|b|k|KB|KiB|Ki|m|MB|MiB|g|GB|GiB|t|TB|TiB|p|PB|PiB|e|EB|EiB)",
    ) {
        let factor = unit_factor(&unit).unwrap();
        let exact = u128::from(whole) * u128::from(factor);
        match parse_size(&format!("{whole}{unit}"), u64::MAX) {
            Ok(n) => prop_assert_eq!(u128::from(n), exact),
            Err(_) => prop_assert!(exact > u128::from(u64::MAX)),
        }
        let text = format!("{whole}.{fraction} {unit}");
        if let Ok(n) = parse_size(&text, limits::SIZE) {
            prop_assert!(n <= limits::SIZE);
            prop_assert!(u128::from(n) >= exact && u128::from(n) <= exact + u128::from(factor));
        }
    }
}
