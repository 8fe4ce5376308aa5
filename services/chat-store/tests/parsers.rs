//! Property tests: the parsers of caller input never panic and keep their promises.

use chat_store::store::{Page, check_user_id, dialog_key, parse_message_id};
use chat_store::translate::check_lang;
use proptest::prelude::*;
use switchboard_proto::common::v1::PageRequest;

proptest! {
    #[test]
    fn page_requests_parse_or_are_refused(size in any::<u32>(), cursor in ".{0,40}") {
        if let Ok(page) = Page::from_request(Some(&PageRequest { page_size: size, cursor: cursor.clone() })) {
            prop_assert!(page.size >= 1 && page.size <= chat_store::store::MAX_PAGE_SIZE);
            if let Some(before) = page.before {
                prop_assert!(before > 0);
                prop_assert_eq!(before.to_string(), cursor);
            }
        }
    }

    #[test]
    fn message_ids_round_trip(id in 1..i64::MAX, junk in "\\PC{0,20}") {
        prop_assert_eq!(parse_message_id(&id.to_string()).ok(), Some(id));
        if let Ok(parsed) = parse_message_id(&junk) {
            prop_assert!(parsed > 0);
        }
    }

    #[test]
    fn dialog_keys_are_symmetric_and_injective(a in ".{0,12}", b in ".{0,12}", c in ".{0,12}", d in ".{0,12}") {
        prop_assert_eq!(dialog_key(&a, &b), dialog_key(&b, &a));
        let same_pair = (a == c && b == d) || (a == d && b == c);
        prop_assert_eq!(dialog_key(&a, &b) == dialog_key(&c, &d), same_pair);
    }

    #[test]
    fn user_ids_and_languages_never_panic(id in "\\PC{0,200}", lang in ".{0,16}") {
        if check_user_id("user", &id).is_ok() {
            prop_assert!(!id.is_empty() && id.len() <= chat_store::store::MAX_ID_LEN);
            prop_assert!(!id.chars().any(char::is_control));
        }
        if check_lang(&lang).is_ok() {
            prop_assert!(lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }
}
