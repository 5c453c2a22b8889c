//! Property tests of lockcore's parsers and schemes: tokens, object, owner and request ids, and
//! fences.
//!
//! Each property runs a few hundred random cases (proptest prints the failing input and a seed
//! to replay it; `PROPTEST_CASES` raises the count for a longer local run).

use lockcore::token::TOKEN_LEN;
use std::time::Duration;

use lockcore::{
    AcquireRequest, Fence, LockError, LockToken, ObjectId, OwnerId, RequestId, TokenIssuer,
    MAX_OBJECT_LEN, MAX_OWNER_LEN, MAX_REQUEST_ID_LEN, MIN_REQUEST_ID_LEN,
};
use proptest::prelude::*;

/// Valid object ids: paths of printable segments, including the characters that are special
/// elsewhere (`{`, `}`, `%`, `.`, spaces, non-ASCII).
fn object_id() -> impl Strategy<Value = ObjectId> {
    "/?[a-zA-Z0-9{}%_ üß-][a-zA-Z0-9{}%._ üß-]{0,8}(/[a-zA-Z0-9{}%_ üß-][a-zA-Z0-9{}%._ üß-]{0,8}){0,3}"
        .prop_map(|s| ObjectId::new(s).expect("printable path"))
}

/// The path rule of `lockcore::path`, written out again: no empty, `.` or `..` segment after an
/// optional leading `/`, at most 32 segments.
fn is_one_spelling(raw: &str) -> bool {
    let relative = raw.strip_prefix('/').unwrap_or(raw);
    let segments: Vec<&str> = relative.split('/').collect();
    segments.len() <= 32
        && segments
            .iter()
            .all(|s| !s.is_empty() && *s != "." && *s != "..")
}

fn owner_id() -> impl Strategy<Value = OwnerId> {
    "[a-zA-Z0-9._ -]{1,20}".prop_map(|s| OwnerId::new(s).expect("printable"))
}

/// Strings that look like tokens more or less: the right prefix, about the right length, in
/// and out of the base64 alphabet.
fn token_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "lk[12]\\.[A-Za-z0-9_-]{70,80}",
        "lk2\\.[A-Za-z0-9_+/=!-]{75}",
        "[a-z0-9]{3}\\.[A-Za-z0-9_-]{75}",
    ]
}

/// An issuer shared by the cases of one property (minting is cheap; the secret is random).
fn issuer() -> TokenIssuer {
    TokenIssuer::random()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Parsing any string never panics: it is a well-formed token or `InvalidToken`.
    #[test]
    fn parsing_any_string_never_panics(raw in token_like()) {
        match LockToken::parse(&raw) {
            Ok(token) => {
                prop_assert_eq!(raw.len(), TOKEN_LEN);
                prop_assert_eq!(token.expose(), raw.as_str());
            }
            Err(e) => prop_assert!(matches!(e, LockError::InvalidToken { .. }), "{e:?}"),
        }
    }

    /// A sealed token parses back to itself, with its fence and digest, and verifies for its
    /// object.
    #[test]
    fn a_sealed_token_round_trips_and_verifies(
        object in object_id(),
        fence in any::<u64>(),
    ) {
        let issuer = issuer();
        let pending = issuer.prepare();
        let stored = pending.digest();
        let token = issuer.seal(pending, &object, Fence(fence));
        let parsed = LockToken::parse(token.expose()).expect("sealed tokens parse");
        prop_assert_eq!(&parsed, &token);
        prop_assert_eq!(parsed.fence(), Fence(fence));
        prop_assert!(parsed.digest().ct_eq(&stored));
        prop_assert_eq!(
            issuer.verifier().verify(&object, token.expose()),
            Ok(Fence(fence))
        );
        prop_assert_eq!(issuer.check(&object, &parsed), Ok(()));
    }

    /// Changing any one character of a token either makes it unparsable or yields a different
    /// token that no longer verifies: no character can be changed undetected.
    #[test]
    fn changing_any_one_character_is_detected(
        object in object_id(),
        fence in any::<u64>(),
        at in 0..TOKEN_LEN,
        replacement in any::<char>(),
    ) {
        let issuer = issuer();
        let token = issuer.seal(issuer.prepare(), &object, Fence(fence));
        let mut chars: Vec<char> = token.expose().chars().collect();
        prop_assume!(chars[at] != replacement);
        chars[at] = replacement;
        let changed: String = chars.into_iter().collect();
        if let Ok(parsed) = LockToken::parse(&changed) {
            prop_assert_ne!(&parsed, &token);
            let refused = matches!(issuer.check(&object, &parsed), Err(LockError::InvalidToken { .. }));
            prop_assert!(refused, "a token with character {at} changed still verifies");
        }
    }

    /// A token verifies only for the object it was minted for and under its own secret.
    #[test]
    fn a_token_verifies_for_no_other_object_or_secret(
        object in object_id(),
        other_object in object_id(),
        fence in any::<u64>(),
    ) {
        let issuer = issuer();
        let token = issuer.seal(issuer.prepare(), &object, Fence(fence));
        if other_object != object {
            let refused = matches!(
                issuer.check(&other_object, &token),
                Err(LockError::InvalidToken { .. })
            );
            prop_assert!(refused, "a token of {object:?} passes for {other_object:?}");
        }
        prop_assert!(TokenIssuer::random().check(&object, &token).is_err());
    }

    /// A request with a request id draws the same nonce (so the same token at the same fence)
    /// on every retry, and a different one for any other object, owner or request id.
    #[test]
    fn a_retried_request_draws_the_same_token_and_no_other_request_does(
        object in object_id(),
        other_object in object_id(),
        owner in owner_id(),
        other_owner in owner_id(),
        id in "[a-zA-Z0-9_.:-]{16,40}",
        other_id in "[a-zA-Z0-9_.:-]{16,40}",
    ) {
        let issuer = issuer();
        let request = |object: &ObjectId, owner: &OwnerId, id: &str| {
            AcquireRequest::new(object.clone(), owner.clone(), Duration::from_secs(1))
                .with_request_id(RequestId::new(id).expect("valid request id"))
        };
        let prepare = |r: &AcquireRequest| {
            issuer.prepare_for(&r.objects[0], &r.owner, r.request_id.as_ref())
        };
        let digest = |r: &AcquireRequest| prepare(r).digest();
        let first = digest(&request(&object, &owner, &id));
        prop_assert!(first.ct_eq(&digest(&request(&object, &owner, &id))));
        let sealed = |r: &AcquireRequest| issuer.seal(prepare(r), &object, Fence(7));
        prop_assert_eq!(
            sealed(&request(&object, &owner, &id)),
            sealed(&request(&object, &owner, &id))
        );
        prop_assert_eq!(first.ct_eq(&digest(&request(&other_object, &owner, &id))), other_object == object);
        prop_assert_eq!(first.ct_eq(&digest(&request(&object, &other_owner, &id))), other_owner == owner);
        prop_assert_eq!(first.ct_eq(&digest(&request(&object, &owner, &other_id))), other_id == id);
        let without_id = AcquireRequest::new(object.clone(), owner.clone(), Duration::from_secs(1));
        prop_assert!(!digest(&without_id).ct_eq(&digest(&without_id)), "no id: a fresh nonce each time");
    }

    /// Request ids accept exactly 16 to 128 bytes of ASCII letters, digits, `-_.:`.
    #[test]
    fn request_ids_accept_exactly_bounded_ascii_names(raw in prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_.:-]{10,20}",
        "[a-zA-Z0-9_.:-]{120,135}",
        "[a-zA-Z0-9_.:/ +é-]{16,20}",
    ]) {
        let valid = (MIN_REQUEST_ID_LEN..=MAX_REQUEST_ID_LEN).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        match RequestId::new(&raw) {
            Ok(id) => {
                prop_assert!(valid, "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert!(!format!("{id:?}").contains(raw.as_str()), "Debug hides the id");
            }
            Err(e) => {
                prop_assert!(!valid, "refused {raw:?}");
                let is_field = matches!(e, LockError::InvalidArgument { field: "request_id", .. });
                prop_assert!(is_field, "{e:?}");
            }
        }
    }

    /// Object ids accept exactly the non-empty strings of at most 1024 bytes without control
    /// characters that are paths of one spelling, keep them unchanged, and refuse the rest as
    /// `InvalidArgument("object")`.
    #[test]
    fn object_ids_accept_exactly_bounded_printable_strings(raw in prop_oneof![
        any::<String>(),
        "\\PC{0,8}",
        proptest::collection::vec(any::<char>(), 1000..1100).prop_map(String::from_iter),
        "x{1020,1030}",
        "/?[a./]{1,12}",
        "(/d){30,34}",
    ]) {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_OBJECT_LEN
            && !raw.chars().any(char::is_control)
            && is_one_spelling(&raw);
        match ObjectId::new(&raw) {
            Ok(id) => {
                prop_assert!(valid, "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert_eq!(raw.parse::<ObjectId>().ok(), Some(id));
            }
            Err(e) => {
                prop_assert!(!valid, "refused {raw:?}");
                let is_object_field = matches!(e, LockError::InvalidArgument { field: "object", .. });
                prop_assert!(is_object_field, "{e:?}");
            }
        }
    }

    /// Owner ids follow the same rule with a 256-byte bound and field `owner`.
    #[test]
    fn owner_ids_accept_exactly_bounded_printable_strings(raw in prop_oneof![
        any::<String>(),
        "x{250,260}",
        "[a-z\\x00-\\x1f\\x7f]{1,10}",
    ]) {
        let valid = !raw.is_empty() && raw.len() <= MAX_OWNER_LEN && !raw.chars().any(char::is_control);
        match OwnerId::new(&raw) {
            Ok(id) => {
                prop_assert!(valid, "accepted {raw:?}");
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
            Err(e) => {
                prop_assert!(!valid, "refused {raw:?}");
                let is_owner_field = matches!(e, LockError::InvalidArgument { field: "owner", .. });
                prop_assert!(is_owner_field, "{e:?}");
            }
        }
    }

    /// The next fence is above the last one and at or above the clock floor, and a floor taken
    /// later is never below one taken earlier.
    #[test]
    fn the_next_fence_is_above_the_last_and_the_clock_floor(
        last in proptest::option::of(any::<u64>()),
        now in any::<u64>(),
        later_by in 0u64..1_000_000,
    ) {
        let next = Fence::next_after(last.map(Fence), now);
        prop_assert!(next >= Fence::clock_floor(now));
        if let Some(last) = last {
            // Only a fence already at u64::MAX cannot be exceeded; it saturates.
            if last < u64::MAX {
                prop_assert!(next > Fence(last), "{next} after {last}");
            } else {
                prop_assert_eq!(next, Fence(u64::MAX));
            }
        }
        let later = now.saturating_add(later_by);
        prop_assert!(Fence::clock_floor(later) >= Fence::clock_floor(now));
    }

    /// A sequence of grants at non-decreasing clock readings gets strictly increasing fences,
    /// and a "restart" that forgets the last fence still lands above every earlier fence once
    /// the clock has moved past the microsecond of the last grant (at most 1024 grants per µs).
    #[test]
    fn fences_strictly_increase_and_survive_forgetting_the_last(
        start in 0u64..(1u64 << 50),
        steps in proptest::collection::vec(0u64..3, 1..200),
    ) {
        let mut now = start;
        let mut last: Option<Fence> = None;
        for step in steps {
            now += step;
            let next = Fence::next_after(last, now);
            if let Some(previous) = last {
                prop_assert!(next > previous);
            }
            last = Some(next);
        }
        let last = last.expect("at least one grant");
        // Fewer than 1024 grants per microsecond were made, so a restart one microsecond after
        // the last grant's clock reading is above them all.
        let after_restart = Fence::next_after(None, now + 1);
        prop_assert!(after_restart > last, "{after_restart} !> {last}");
    }
}
