//! The store's operations and authorization checks, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use chat_store::Error;
use chat_store::store::{Caller, DialogFilter, Limits, NewMessage, Page, Receipt, Store, UserInfo};
use common::{Backend, TestDb};
use switchboard_proto::chat::v1::{ComplaintState, RelationKind};

async fn open(backend: Backend) -> (TestDb, Store) {
    open_with(backend, Limits::default(), &["root".to_owned()]).await
}

async fn open_with(backend: Backend, limits: Limits, admins: &[String]) -> (TestDb, Store) {
    let db = TestDb::new(backend).await;
    let store = Store::open(&db.url, 4, limits, admins).await.expect("open store");
    (db, store)
}

fn text(to: &str, text: &str) -> NewMessage {
    NewMessage {
        to: to.into(),
        text: text.into(),
        ..Default::default()
    }
}

fn with_client_id(to: &str, body: &str, client_id: &str) -> NewMessage {
    NewMessage {
        client_id: client_id.into(),
        ..text(to, body)
    }
}

async fn send_ok(store: &Store, from: &str, to: &str, body: &str) -> i64 {
    let sent = store.send(&Caller::user(from), text(to, body)).await.expect("send");
    sent.message.id.parse().expect("numeric id")
}

async fn sending_is_idempotent_per_client_id(backend: Backend) {
    let (_db, store) = open(backend).await;
    let alice = Caller::user("alice");
    let first = store
        .send(&alice, with_client_id("bob", "hi", "c-1"))
        .await
        .expect("send");
    let again = store
        .send(&alice, with_client_id("bob", "hi", "c-1"))
        .await
        .expect("retry");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.message.id, again.message.id);
    // Another sender may reuse the same client id.
    let other = store
        .send(&Caller::user("carol"), with_client_id("bob", "yo", "c-1"))
        .await
        .expect("send");
    assert!(!other.duplicate);
    let (page, _) = store
        .history(&Caller::user("bob"), "alice", Page::first(10))
        .await
        .expect("history");
    assert_eq!(page.len(), 1, "a retry never doubles a message");
    assert_eq!(page[0].text, "hi");
}
both!(idempotent_send, sending_is_idempotent_per_client_id);

async fn text_is_stored_as_given_and_length_limited(backend: Backend) {
    let limits = Limits {
        max_text_chars: 5,
        ..Limits::default()
    };
    let (_db, store) = open_with(backend, limits, &[]).await;
    let alice = Caller::user("alice");
    let html = "<b>&</b>";
    let too_long = store.send(&alice, text("bob", html)).await;
    assert!(matches!(too_long, Err(Error::ResourceExhausted(_))), "{too_long:?}");
    // Five characters of multi-byte text fit: the limit counts characters.
    let sent = store.send(&alice, text("bob", "żółw🐢")).await.expect("5 chars fit");
    assert_eq!(sent.message.text, "żółw🐢");
    let sent = store.send(&alice, text("bob", "żółw🐢!")).await;
    assert!(matches!(sent, Err(Error::ResourceExhausted(_))), "6 chars refused");
    let sent = store.send(&alice, text("bob", "<b>&")).await.expect("fits");
    assert_eq!(sent.message.text, "<b>&", "stored exactly, never escaped");
    for bad in [
        text("bob", ""),
        text("bob", "  "),
        text("alice", "me"),
        text("", "x"),
        text("bob", "a\0"),
    ] {
        let result = store.send(&alice, bad.clone()).await;
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{bad:?}: {result:?}");
    }
}
both!(text_limits, text_is_stored_as_given_and_length_limited);

async fn blocked_senders_are_refused_and_admins_cannot_be_blocked(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (alice, bob) = (Caller::user("alice"), Caller::user("bob"));
    assert!(
        store
            .set_relation(&bob, "alice", RelationKind::Blocked, true)
            .await
            .expect("block")
    );
    let refused = store.send(&alice, text("bob", "hello?")).await;
    match refused {
        Err(Error::Blocked(message)) => assert!(message.contains("bob has blocked you"), "{message}"),
        other => panic!("expected a block, got {other:?}"),
    }
    let own_block = store.send(&bob, text("alice", "hi")).await;
    assert!(matches!(own_block, Err(Error::Blocked(m)) if m.contains("unblock")));
    // Admins (configured) write through blocks and cannot be blocked.
    store
        .send(&Caller::admin("root"), text("bob", "admin here"))
        .await
        .expect("admin sends");
    let refused = store.set_relation(&bob, "root", RelationKind::Blocked, true).await;
    assert!(matches!(refused, Err(Error::PermissionDenied(_))), "{refused:?}");
    // Admins set through the management API count too.
    store.set_admins(&["mod".to_owned()]).await.expect("set admins");
    assert!(store.is_admin("mod").await.expect("is admin"));
    let refused = store.set_relation(&bob, "mod", RelationKind::Blocked, true).await;
    assert!(matches!(refused, Err(Error::PermissionDenied(_))));
    // Unblocking lets messages through again.
    assert!(
        store
            .set_relation(&bob, "alice", RelationKind::Blocked, false)
            .await
            .expect("unblock")
    );
    store
        .send(&alice, text("bob", "thanks"))
        .await
        .expect("send after unblock");
    assert_eq!(
        store.relations(&bob, RelationKind::Blocked).await.expect("list"),
        Vec::<String>::new()
    );
}
both!(blocking, blocked_senders_are_refused_and_admins_cannot_be_blocked);

async fn edit_and_delete_own_messages_within_the_window(backend: Backend) {
    let (_db, store) = open(backend).await;
    let (alice, bob) = (Caller::user("alice"), Caller::user("bob"));
    let id = send_ok(&store, "alice", "bob", "helo").await;
    let edited = store.edit(&alice, id, "hello".into()).await.expect("edit");
    assert_eq!(edited.text, "hello");
    assert!(edited.edited_at.is_some());
    assert!(matches!(
        store.edit(&bob, id, "x".into()).await,
        Err(Error::PermissionDenied(_))
    ));
    assert!(matches!(store.delete(&bob, id).await, Err(Error::PermissionDenied(_))));
    assert!(matches!(
        store.edit(&Caller::user("eve"), id, "x".into()).await,
        Err(Error::NotFound(_))
    ));
    let deleted = store.delete(&alice, id).await.expect("delete");
    assert!(deleted.deleted_at.is_some());
    assert_eq!(deleted.text, "", "the text is gone");
    assert!(matches!(
        store.edit(&alice, id, "back".into()).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        store.edit(&alice, 999_999, "x".into()).await,
        Err(Error::NotFound(_))
    ));
}
both!(edit_delete, edit_and_delete_own_messages_within_the_window);

async fn the_window_closes_but_admins_delete_any_time(backend: Backend) {
    let limits = Limits {
        edit_window: Duration::ZERO,
        ..Limits::default()
    };
    let (_db, store) = open_with(backend, limits, &[]).await;
    let id = send_ok(&store, "alice", "bob", "oops").await;
    // The clock moves on: the zero window has passed for sure.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = store.edit(&Caller::user("alice"), id, "fixed".into()).await;
    assert!(
        matches!(late, Err(Error::Conflict(ref m)) if m.contains("window")),
        "{late:?}"
    );
    assert!(matches!(
        store.delete(&Caller::user("alice"), id).await,
        Err(Error::Conflict(_))
    ));
    let removed = store.delete(&Caller::admin("root"), id).await.expect("admin delete");
    assert!(removed.deleted_at.is_some());
}
both!(edit_window, the_window_closes_but_admins_delete_any_time);

async fn receipts_mark_up_to_a_message_and_unread_counts_follow(backend: Backend) {
    let (_db, store) = open(backend).await;
    let bob = Caller::user("bob");
    let a1 = send_ok(&store, "alice", "bob", "1").await;
    let a2 = send_ok(&store, "alice", "bob", "2").await;
    let a3 = send_ok(&store, "alice", "bob", "3").await;
    send_ok(&store, "carol", "bob", "c").await;
    send_ok(&store, "bob", "alice", "reply").await;
    assert_eq!(store.count_unread(&bob, None).await.expect("total"), 4);
    assert_eq!(store.count_unread(&bob, Some("alice")).await.expect("alice"), 3);
    let delivered = store
        .mark(&bob, "alice", None, Receipt::Delivered)
        .await
        .expect("delivered");
    assert_eq!(delivered.ids, vec![a1, a2, a3]);
    assert_eq!(store.count_unread(&bob, Some("alice")).await.expect("still unread"), 3);
    let read = store.mark(&bob, "alice", Some(a2), Receipt::Read).await.expect("read");
    assert_eq!(read.ids, vec![a1, a2]);
    let again = store
        .mark(&bob, "alice", Some(a2), Receipt::Read)
        .await
        .expect("read again");
    assert!(again.ids.is_empty(), "receipts are recorded once");
    assert_eq!(store.count_unread(&bob, Some("alice")).await.expect("alice"), 1);
    assert_eq!(store.count_unread(&bob, None).await.expect("total"), 2);
    // Marking the other side's messages from one's own account changes nothing.
    let alice_marks = store
        .mark(&Caller::user("alice"), "bob", None, Receipt::Read)
        .await
        .expect("mark");
    assert_eq!(alice_marks.ids.len(), 1, "only bob's reply to alice");
    let (history, _) = store
        .history(&Caller::user("alice"), "bob", Page::first(10))
        .await
        .expect("history");
    let first = history.iter().find(|m| m.id == a1.to_string()).expect("a1");
    assert!(
        first.read_at.is_some() && first.delivered_at.is_some(),
        "the sender sees two ticks"
    );
    let third = history.iter().find(|m| m.id == a3.to_string()).expect("a3");
    assert!(third.read_at.is_none() && third.delivered_at.is_some());
}
both!(receipts, receipts_mark_up_to_a_message_and_unread_counts_follow);

async fn history_pages_by_cursor_newest_first(backend: Backend) {
    let (_db, store) = open(backend).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 { ("alice", "bob") } else { ("bob", "alice") };
        ids.push(send_ok(&store, from, to, &format!("m{i}")).await);
    }
    send_ok(&store, "alice", "carol", "elsewhere").await;
    let alice = Caller::user("alice");
    let mut seen = Vec::new();
    let mut page = Page::first(3);
    loop {
        let (messages, info) = store.history(&alice, "bob", page).await.expect("page");
        seen.extend(messages.iter().map(|m| m.id.parse::<i64>().expect("id")));
        if !info.has_more {
            assert!(info.next_cursor.is_empty());
            break;
        }
        page.before = Some(info.next_cursor.parse().expect("cursor"));
    }
    ids.reverse();
    assert_eq!(seen, ids, "every message once, newest first, none from other dialogs");
    // Bob sees the same dialog; a stranger sees an empty one.
    let (bobs, _) = store
        .history(&Caller::user("bob"), "alice", Page::first(50))
        .await
        .expect("bob");
    assert_eq!(bobs.len(), 7);
    let (eves, _) = store
        .history(&Caller::user("eve"), "bob", Page::first(50))
        .await
        .expect("eve");
    assert!(eves.is_empty());
}
both!(history, history_pages_by_cursor_newest_first);

async fn dialog_list_has_last_message_unread_and_relations(backend: Backend) {
    let (_db, store) = open(backend).await;
    let bob = Caller::user("bob");
    send_ok(&store, "alice", "bob", "a1").await;
    send_ok(&store, "carol", "bob", "c1").await;
    send_ok(&store, "alice", "bob", "a2").await;
    send_ok(&store, "bob", "dave", "d1").await;
    store
        .set_relation(&bob, "carol", RelationKind::Favourite, true)
        .await
        .expect("fav");
    store
        .set_relation(&bob, "dave", RelationKind::Blocked, true)
        .await
        .expect("block");
    let (dialogs, info) = store
        .dialogs(&bob, DialogFilter::All, Page::first(2))
        .await
        .expect("dialogs");
    assert!(info.has_more);
    let peers: Vec<&str> = dialogs.iter().map(|d| d.peer.as_str()).collect();
    assert_eq!(peers, ["dave", "alice"]);
    assert_eq!(dialogs[0].last_message.as_ref().map(|m| m.text.as_str()), Some("d1"));
    assert!(dialogs[0].blocked);
    assert_eq!(dialogs[0].unread, 0);
    assert_eq!(dialogs[1].last_message.as_ref().map(|m| m.text.as_str()), Some("a2"));
    assert_eq!(dialogs[1].unread, 2);
    let next = Page {
        size: 2,
        before: Some(info.next_cursor.parse().expect("cursor")),
    };
    let (rest, info) = store.dialogs(&bob, DialogFilter::All, next).await.expect("page 2");
    assert!(!info.has_more);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].peer, "carol");
    assert!(rest[0].favourite);
    let (favourites, _) = store
        .dialogs(&bob, DialogFilter::Favourites, Page::first(10))
        .await
        .expect("favs");
    assert_eq!(
        favourites.iter().map(|d| d.peer.as_str()).collect::<Vec<_>>(),
        ["carol"]
    );
    let (blocked, _) = store
        .dialogs(&bob, DialogFilter::Blocked, Page::first(10))
        .await
        .expect("blocked");
    assert_eq!(blocked.iter().map(|d| d.peer.as_str()).collect::<Vec<_>>(), ["dave"]);
    assert!(matches!(DialogFilter::parse("weird"), Err(Error::InvalidArgument(_))));
}
both!(dialogs, dialog_list_has_last_message_unread_and_relations);

async fn complaints_are_filed_and_resolved_by_admins(backend: Backend) {
    let (_db, store) = open(backend).await;
    let bob = Caller::user("bob");
    let id = send_ok(&store, "alice", "bob", "spam").await;
    let about_message = store.complain(&bob, "", Some(id), "spam").await.expect("complain");
    assert_eq!(about_message.target_user, "alice");
    assert_eq!(about_message.state(), ComplaintState::Open);
    let about_user = store.complain(&bob, "carol", None, "rude").await.expect("complain");
    // Nobody complains about a message they cannot see, or with no reason.
    assert!(matches!(
        store.complain(&Caller::user("eve"), "", Some(id), "x").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.complain(&bob, "carol", None, " ").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store
            .complaints(&bob, ComplaintState::Unspecified, Page::first(10))
            .await,
        Err(Error::PermissionDenied(_))
    ));
    let root = Caller::admin("root");
    let (open, _) = store
        .complaints(&root, ComplaintState::Open, Page::first(10))
        .await
        .expect("list");
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].id, about_user.id, "newest first");
    let complaint_id = about_message.id.parse().expect("id");
    assert!(matches!(
        store.resolve_complaint(&bob, complaint_id, "no").await,
        Err(Error::PermissionDenied(_))
    ));
    let resolved = store
        .resolve_complaint(&root, complaint_id, "warned")
        .await
        .expect("resolve");
    assert_eq!(resolved.state(), ComplaintState::Resolved);
    assert_eq!(resolved.resolved_by, "root");
    assert!(matches!(
        store.resolve_complaint(&root, complaint_id, "again").await,
        Err(Error::Conflict(_))
    ));
    let (open, _) = store
        .complaints(&root, ComplaintState::Open, Page::first(10))
        .await
        .expect("open");
    assert_eq!(open.len(), 1);
    let (done, _) = store
        .complaints(&root, ComplaintState::Resolved, Page::first(10))
        .await
        .expect("resolved");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].resolution, "warned");
}
both!(complaints, complaints_are_filed_and_resolved_by_admins);

async fn contacts_and_full_text_search(backend: Backend) {
    let (_db, store) = open(backend).await;
    store
        .put_users(&[
            UserInfo {
                id: "1".into(),
                name: "Виктор".into(),
                login: "victor".into(),
                ..Default::default()
            },
            UserInfo {
                id: "2".into(),
                name: "Лена".into(),
                login: "lena".into(),
                age: Some(25),
                ..Default::default()
            },
        ])
        .await
        .expect("users");
    let found = store.search_contacts("вик", 10).await.expect("by name");
    assert_eq!(found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["1"]);
    let found = store.search_contacts("LEN", 10).await.expect("by login");
    assert_eq!(found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["2"]);
    assert!(store.search_contacts("zzz", 10).await.expect("none").is_empty());
    assert!(matches!(
        store.search_contacts(" ", 10).await,
        Err(Error::InvalidArgument(_))
    ));

    send_ok(&store, "alice", "bob", "the quick brown fox").await;
    send_ok(&store, "bob", "alice", "a lazy dog").await;
    send_ok(&store, "carol", "dave", "quick quick").await;
    let deleted = send_ok(&store, "alice", "bob", "quick but deleted").await;
    store.delete(&Caller::user("alice"), deleted).await.expect("delete");
    let alice = Caller::user("alice");
    let (hits, _) = store.search(&alice, "quick", Page::first(10)).await.expect("search");
    assert_eq!(
        hits.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["the quick brown fox"]
    );
    let (hits, _) = store.search(&alice, "LAZY dog", Page::first(10)).await.expect("search");
    assert_eq!(hits.len(), 1, "received messages are searched too, case-insensitively");
    // FTS syntax in the query is just text.
    for hostile in ["\"", "quick OR", "NEAR(", "*", "a:b", "-x"] {
        store.search(&alice, hostile, Page::first(10)).await.expect(hostile);
    }
    assert!(matches!(
        store.search(&alice, "  ", Page::first(10)).await,
        Err(Error::InvalidArgument(_))
    ));
}
both!(search, contacts_and_full_text_search);

async fn admin_views_and_erasing_a_user(backend: Backend) {
    let (_db, store) = open(backend).await;
    send_ok(&store, "alice", "bob", "1").await;
    send_ok(&store, "bob", "carol", "2").await;
    send_ok(&store, "carol", "alice", "3").await;
    send_ok(&store, "bob", "alice", "4").await;
    let root = Caller::admin("root");
    let bob = Caller::user("bob");
    assert!(matches!(
        store.admin_messages(&bob, "", "", false, Page::first(10)).await,
        Err(Error::PermissionDenied(_))
    ));
    let texts = |v: Vec<switchboard_proto::chat::v1::ChatMessage>| v.into_iter().map(|m| m.text).collect::<Vec<_>>();
    let (all, _) = store
        .admin_messages(&root, "", "", false, Page::first(10))
        .await
        .expect("monitor");
    assert_eq!(texts(all), ["4", "3", "2", "1"]);
    let (page, info) = store
        .admin_messages(&root, "bob", "", false, Page::first(2))
        .await
        .expect("user");
    assert_eq!(texts(page), ["4", "2"]);
    let next = Page {
        size: 2,
        before: Some(info.next_cursor.parse().expect("cursor")),
    };
    let (rest, info) = store
        .admin_messages(&root, "bob", "", false, next)
        .await
        .expect("user page 2");
    assert_eq!(texts(rest), ["1"]);
    assert!(!info.has_more);
    let (dialog, _) = store
        .admin_messages(&root, "alice", "bob", false, Page::first(10))
        .await
        .expect("dialog");
    assert_eq!(texts(dialog), ["4", "1"]);
    let (with_files, _) = store
        .admin_messages(&root, "", "", true, Page::first(10))
        .await
        .expect("files");
    assert!(with_files.is_empty());

    store
        .set_relation(&bob, "alice", RelationKind::Favourite, true)
        .await
        .expect("fav");
    let erased = store.erase_user("bob").await.expect("erase");
    assert_eq!(erased.messages, 3);
    let (left, _) = store
        .admin_messages(&root, "", "", false, Page::first(10))
        .await
        .expect("monitor");
    assert_eq!(texts(left), ["3"]);
    assert!(
        store
            .relations(&bob, RelationKind::Favourite)
            .await
            .expect("rels")
            .is_empty()
    );
}
both!(admin_views, admin_views_and_erasing_a_user);

async fn migrations_are_idempotent_across_restarts(backend: Backend) {
    let (db, store) = open(backend).await;
    send_ok(&store, "alice", "bob", "kept").await;
    drop(store);
    let reopened = Store::open(&db.url, 2, Limits::default(), &[]).await.expect("reopen");
    let (messages, _) = reopened
        .history(&Caller::user("bob"), "alice", Page::first(5))
        .await
        .expect("history");
    assert_eq!(messages.len(), 1);
}
both!(reopen, migrations_are_idempotent_across_restarts);

async fn batches_are_checked_and_idempotent(backend: Backend) {
    let (_db, store) = open(backend).await;
    store
        .send(&Caller::user("alice"), with_client_id("bob", "before", "b-1"))
        .await
        .expect("send");
    let batch = vec![
        (Caller::user("alice"), with_client_id("bob", "before", "b-1")),
        (Caller::user("alice"), with_client_id("bob", "one", "b-2")),
        (Caller::user("alice"), with_client_id("bob", "one again", "b-2")),
        (Caller::user("carol"), with_client_id("bob", "two", "b-1")),
    ];
    let outcome = store.send_many(batch.clone()).await.expect("batch");
    assert_eq!(outcome.stored, 2);
    assert_eq!(outcome.duplicates, 2);
    let again = store.send_many(batch).await.expect("retry");
    assert_eq!(again.stored, 0, "a retried batch stores nothing");
    assert_eq!(store.count_unread(&Caller::user("bob"), None).await.expect("count"), 3);
    store
        .set_relation(&Caller::user("bob"), "dave", RelationKind::Blocked, true)
        .await
        .expect("block");
    let refused = store
        .send_many(vec![
            (Caller::user("eve"), with_client_id("bob", "fine", "e-1")),
            (Caller::user("dave"), with_client_id("bob", "blocked", "d-1")),
        ])
        .await;
    assert!(matches!(refused, Err(Error::Blocked(_))), "{refused:?}");
    assert_eq!(
        store.count_unread(&Caller::user("bob"), None).await.expect("count"),
        3,
        "a refused batch stores nothing"
    );
    let too_long = store
        .send_many(vec![(Caller::user("eve"), text("bob", &"x".repeat(5000)))])
        .await;
    assert!(matches!(too_long, Err(Error::ResourceExhausted(_))));
}
both!(batches, batches_are_checked_and_idempotent);

async fn concurrent_sends_and_receipts_all_succeed(backend: Backend) {
    // Sends read (idempotency, blocks) then write; receipts write beside them. On
    // SQLite a transaction that read before another connection committed cannot
    // upgrade to a write (SQLITE_BUSY_SNAPSHOT), so writers must take the lock first.
    let (_db, store) = open(backend).await;
    send_ok(&store, "bob", "alice", "start").await;
    let mut tasks = Vec::new();
    for n in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if n % 2 == 0 {
                store
                    .send(&Caller::user("carol"), text("alice", &format!("m{n}")))
                    .await
                    .map(|_| ())
            } else {
                store
                    .mark(&Caller::user("alice"), "carol", None, Receipt::Delivered)
                    .await
                    .map(|_| ())
            }
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("every write succeeds");
    }
    let (page, _) = store
        .history(&Caller::user("alice"), "carol", Page::first(100))
        .await
        .expect("history");
    assert_eq!(page.len(), 20);
}
both!(concurrent_writes, concurrent_sends_and_receipts_all_succeed);
