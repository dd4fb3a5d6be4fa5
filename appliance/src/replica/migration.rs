//! Moving pages between peers while hosts keep writing: the replica machinery with
//! one more member.
//!
//! A move of a page from peer A to peer B gives the page a set of its own (a copy of
//! its set, appended to the volume's sets) with B added as a member being rebuilt and
//! the move recorded in it ([`Move`]). From there everything is a replica set's:
//!
//! ```text
//!  start ──► B: Rebuild{full}  (every write goes to A and B; the leader copies the page
//!            │                  to B piece by piece under the piece locks, rate-limited;
//!            │                  reads stay with the copies in sync)
//!            ▼ the leader promotes B (it has every piece)
//!  cut-over ─► A: Leaving, B leads if A led (a new epoch: A gets every write, serves
//!            │   no read; a late request to A is forwarded by A's new table)
//!            ▼ a lease TTL later (every peer has the new table, or is fenced)
//!  done ────► A leaves the set (a new epoch); A frees its slot after a barrier
//! ```
//!
//! Reads are served by `Sync` copies only, so nobody reads A's copy once B orders the
//! page's writes without A: between the cut-over and A's removal B still sends A every
//! write, and a peer whose table predates the cut-over reads from A only while A cannot
//! yet have missed a write (B's writes wait for A, and A refuses them until it has the
//! cut-over's table). If B goes (its lease) before the cut-over, the move is abandoned:
//! B leaves the set and A stays. If B goes after it, A takes the lead back: it has every
//! acknowledged write.
//!
//! The coordinator advances moves in its plan ([`advance`], called from
//! `replica::plan`); a move is started ([`start_page`], [`start_set`]) or cancelled
//! ([`cancel`]) by a volume change in the group (`quire page move`, `quire peer
//! drain`, `quire migration cancel`). Progress is the leader's rebuild of B (persisted
//! by the leader in `/quire/v1/rebuild/<peer>`, its pieces in the record's member
//! state); a copy cut short by a crash of the leader starts again (by comparison).

use super::plan::PlanInput;
use super::set::{Member, MemberState, Move, RebuildMode, SetRecord};
use crate::group::keys::VolumeRecord;

/// Starts moving page `page` of `r` to peer `to` (live with lease `to_inc`), from
/// `from` (`None`: the page's leader): the page gets a set of its own with `to` added.
/// Refused with the reason when the page's set is not all in sync, already moves, or
/// `to` already holds it.
pub fn start_page(
    r: &VolumeRecord,
    page: u64,
    from: Option<u16>,
    to: (u16, i64),
    now_ms: u64,
) -> Result<VolumeRecord, String> {
    start_pages(r, &[page], from, to, now_ms)
}

/// [`start_page`] for several pages of one set at once (the rebalancer's batches):
/// they share the new set, so they are copied together and cut over together.
pub fn start_pages(
    r: &VolumeRecord,
    pages: &[u64],
    from: Option<u16>,
    (to, to_inc): (u16, i64),
    now_ms: u64,
) -> Result<VolumeRecord, String> {
    let mut page_sets = r.page_sets()?;
    let &first = pages.first().ok_or("no page to move")?;
    let mut set_index = None;
    for &page in pages {
        let idx = usize::try_from(page).ok().filter(|&p| p < page_sets.len());
        let Some(idx) = idx else {
            return Err(format!("volume {:?} has {} pages: no page {page}", r.name, page_sets.len()));
        };
        if *set_index.get_or_insert(page_sets[idx]) != page_sets[idx] {
            return Err(format!("pages {first} and {page} are in different sets: they move apart"));
        }
    }
    let old_index = set_index.expect("at least one page");
    let old = r.sets.get(usize::from(old_index)).ok_or("the page's set is missing")?;
    if let Some(mv) = old.mv {
        return Err(format!("page {first} moves already: from peer {} to peer {} (id {})", mv.from, mv.to, mv.id));
    }
    let mut set = SetRecord { leader: old.leader, members: old.members.clone(), mv: None };
    start_set(&mut set, from.unwrap_or(old.leader), (to, to_inc), now_ms)?;
    let mut next = r.clone();
    let si = u16::try_from(next.sets.len()).map_err(|_| "the volume has no set index left".to_string())?;
    next.sets.push(set);
    for &page in pages {
        page_sets[usize::try_from(page).expect("checked")] = si;
    }
    next.set_page_sets(&page_sets);
    next.epoch += 1;
    Ok(next)
}

/// Starts moving every page of set `s` from `from` to `to` (a drain moves whole sets).
pub fn start_set(s: &mut SetRecord, from: u16, (to, to_inc): (u16, i64), now_ms: u64) -> Result<(), String> {
    if let Some(mv) = s.mv {
        return Err(format!("a move from peer {} to peer {} is under way (id {})", mv.from, mv.to, mv.id));
    }
    if s.member(from).is_none() {
        return Err(format!("peer {from} holds no copy of it"));
    }
    if s.member(to).is_some() {
        return Err(format!("peer {to} holds a copy of it already"));
    }
    if !s.members.iter().all(|m| m.state == MemberState::Sync) {
        return Err("not every copy of it is in sync: try again once it is".into());
    }
    if s.members.len() >= super::set::MEMBERS_MAX {
        return Err(format!("it has {} copies: no room for one more", s.members.len()));
    }
    s.members.push(Member { peer: to, inc: to_inc, state: MemberState::Rebuild { mode: RebuildMode::Full } });
    s.mv = Some(Move { id: now_ms, from, to, cut_ms: None });
    debug_assert!(s.check().is_ok(), "{s:?}");
    Ok(())
}

/// Cancels move `id` of `r` (before its cut-over: the new copy leaves the sets, the
/// old one stays). Refused when there is no such move, or it was cut over already.
pub fn cancel(r: &VolumeRecord, id: u64) -> Result<VolumeRecord, String> {
    let mut next = r.clone();
    let mut found = false;
    for s in &mut next.sets {
        let Some(mv) = s.mv.filter(|m| m.id == id) else { continue };
        if mv.cut_ms.is_some() {
            return Err(format!("move {id} was cut over already: it finishes"));
        }
        remove_member(s, mv.to);
        s.mv = None;
        found = true;
    }
    if !found {
        return Err(format!("volume {:?} has no move {id}", r.name));
    }
    next.epoch += 1;
    Ok(next)
}

/// The coordinator's step for set `i`'s move, if it has one (before evictions: a move
/// whose target is gone is given up, and after the cut-over its source leads again).
pub fn advance(s: &mut SetRecord, i: usize, input: &PlanInput<'_>, why: &mut Vec<String>) {
    let Some(mv) = s.mv else { return };
    let to_state = s.member(mv.to).map(|m| (m.state.clone(), input.valid(m)));
    match to_state {
        Some((MemberState::Out { .. }, _)) | Some((_, false)) | None => {
            let from_k = s.members.iter().position(|m| m.peer == mv.from);
            let from_live = from_k.is_some_and(|k| !matches!(s.members[k].state, MemberState::Out { .. }));
            if s.leader == mv.to {
                // Cut over already: the source takes the lead back. It was sent every
                // write the target acknowledged. Gone too: the set waits (evictions).
                let Some(k) = from_k.filter(|_| from_live) else { return };
                s.members[k].state = MemberState::Sync;
                hand_lead(s, mv.from);
                // The others may differ from it where the target's last writes were in
                // flight (as after any leader's death).
                for m in &mut s.members {
                    if m.peer != mv.from && m.peer != mv.to && m.state == MemberState::Sync {
                        m.state = MemberState::Reconcile;
                    }
                }
            } else if let Some(k) = from_k.filter(|&k| matches!(s.members[k].state, MemberState::Leaving { .. })) {
                s.members[k].state = MemberState::Sync;
            }
            why.push(format!("set {i}: move {} from peer {} given up: peer {} is gone", mv.id, mv.from, mv.to));
            if s.member(mv.to).is_some() {
                remove_member(s, mv.to);
            }
            s.mv = None;
        }
        Some((MemberState::Sync, true)) => {
            let Some(k) = s.members.iter().position(|m| m.peer == mv.from) else {
                s.mv = None;
                return;
            };
            match s.members[k].state {
                MemberState::Out { .. } => {
                    // The source is gone: nothing to hand over (an Out member serves
                    // nothing).
                    why.push(format!("set {i}: move {} done: peer {} is gone, peer {} has it", mv.id, mv.from, mv.to));
                    if s.leader == mv.from {
                        hand_lead(s, mv.to);
                    }
                    remove_member(s, mv.from);
                    s.mv = None;
                }
                MemberState::Leaving { since_ms } => {
                    if s.leader == mv.from {
                        // It took the lead back meanwhile (nobody else could): hand
                        // it over again.
                        hand_lead(s, mv.to);
                    }
                    if input.now_ms >= since_ms + input.ttl_ms {
                        why.push(format!("set {i}: move {} done: peer {} leaves the set", mv.id, mv.from));
                        remove_member(s, mv.from);
                        s.mv = None;
                    }
                }
                _ => {
                    // The cut-over, or again after the source was evicted and admitted
                    // back meanwhile (it may serve reads again: the grace starts over).
                    why.push(format!("set {i}: move {} cut over from peer {} to peer {}", mv.id, mv.from, mv.to));
                    s.members[k].state = MemberState::Leaving { since_ms: input.now_ms };
                    if s.leader == mv.from {
                        hand_lead(s, mv.to);
                    }
                    s.mv = Some(Move { cut_ms: Some(input.now_ms), ..mv });
                }
            }
        }
        // Being copied to (or compared, after a change of leader): wait.
        Some(_) => {}
    }
}

/// Makes `peer` the set's leader. What the old leader tracked of the members that are
/// out, and what members being rebuilt by delta lack, the new one does not know: they
/// come back, and are rebuilt, by comparison.
fn hand_lead(s: &mut SetRecord, peer: u16) {
    if s.leader == peer {
        return;
    }
    s.leader = peer;
    for m in &mut s.members {
        match m.state {
            MemberState::Out { ref mut tracker, .. } => *tracker = None,
            MemberState::Rebuild { mode: RebuildMode::Delta } => {
                m.state = MemberState::Rebuild { mode: RebuildMode::Compare }
            }
            _ => {}
        }
    }
}

/// Removes `peer`'s member from `s`. The members after it move up a position, and what
/// the leader tracked of them is kept by position: nobody knows what they missed any
/// more.
pub fn remove_member(s: &mut SetRecord, peer: u16) {
    let k = s.members.iter().position(|m| m.peer == peer).expect("a member");
    assert_ne!(s.members[k].peer, s.leader, "the leader is never removed");
    s.members.remove(k);
    for m in &mut s.members[k..] {
        match m.state {
            MemberState::Out { ref mut tracker, .. } => *tracker = None,
            MemberState::Rebuild { mode: RebuildMode::Delta } => {
                m.state = MemberState::Rebuild { mode: RebuildMode::Compare }
            }
            _ => {}
        }
    }
}

/// A move under way, for `quire migration list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveInfo {
    /// Its id.
    pub id: u64,
    /// The set.
    pub set: usize,
    /// Its pages: the first, and how many.
    pub first_page: u64,
    /// Pages.
    pub pages: u64,
    /// From and to (routing ids).
    pub from: u16,
    /// To.
    pub to: u16,
    /// `copying`, `cut over`.
    pub phase: &'static str,
}

/// The moves under way in `r`.
pub fn moves(r: &VolumeRecord) -> Vec<MoveInfo> {
    let page_sets = r.page_sets().unwrap_or_default();
    let mut out = Vec::new();
    for (si, s) in r.sets.iter().enumerate() {
        let Some(mv) = s.mv else { continue };
        let mut pages = page_sets.iter().enumerate().filter(|(_, &p)| usize::from(p) == si).map(|(p, _)| p as u64);
        let Some(first_page) = pages.next() else { continue };
        out.push(MoveInfo {
            id: mv.id,
            set: si,
            first_page,
            pages: 1 + pages.count() as u64,
            from: mv.from,
            to: mv.to,
            phase: if mv.cut_ms.is_some() { "cut over" } else { "copying" },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::replica::plan::plan_volume;
    use crate::replica::plan::tests::{input, peers, volume};

    fn state(s: &SetRecord, peer: u16) -> Option<MemberState> {
        s.member(peer).map(|m| m.state.clone())
    }

    #[test]
    fn a_page_moves_through_copy_cut_over_and_hand_over_to_one_copy() {
        // One copy per page, pages 0 and 1 on peer 0; page 1 moves to peer 2.
        let r = volume(1, vec![SetRecord::fresh(&[(0, 10)])], &[0, 0]);
        let p = peers(&[(0, Some(10)), (1, Some(11)), (2, Some(12))]);
        let none = BTreeMap::new();
        let moved = start_page(&r, 1, None, (2, 12), 1000).unwrap();
        assert_eq!(moved.epoch, r.epoch + 1);
        assert_eq!(moved.page_sets().unwrap(), vec![0, 1], "page 1 has a set of its own");
        let s = &moved.sets[1];
        assert_eq!((s.leader, s.mv.map(|m| (m.from, m.to, m.cut_ms))), (0, Some((0, 2, None))));
        assert_eq!(state(s, 2), Some(MemberState::Rebuild { mode: RebuildMode::Full }));
        assert_eq!(moved.sets[0], r.sets[0], "page 0 keeps its set");
        // Refused: twice, to a holder, a page out of range.
        assert!(start_page(&moved, 1, None, (1, 11), 1001).unwrap_err().contains("moves already"));
        assert!(start_page(&r, 0, None, (0, 10), 1001).unwrap_err().contains("already"));
        assert!(start_page(&r, 2, None, (2, 12), 1001).unwrap_err().contains("no page 2"));
        // Copying: the plan waits (and adds no copy for the extra member).
        assert_eq!(plan_volume(&moved, &input(2000, &p, &none)), None);
        // The leader promoted the new copy: cut-over, peer 2 leads, peer 0 leaving.
        let mut promoted = moved.clone();
        promoted.sets[1].members[1].state = MemberState::Sync;
        let (cut, why) = plan_volume(&promoted, &input(3000, &p, &none)).unwrap();
        assert!(why[0].contains("cut over"), "{why:?}");
        let s = &cut.sets[1];
        assert_eq!((s.leader, state(s, 0)), (2, Some(MemberState::Leaving { since_ms: 3000 })));
        assert_eq!(s.mv.unwrap().cut_ms, Some(3000));
        // Within a TTL: nothing; after it: peer 0 leaves, one copy left, no move.
        assert_eq!(plan_volume(&cut, &input(7999, &p, &none)), None);
        let (done, _) = plan_volume(&cut, &input(8000, &p, &none)).unwrap();
        let s = &done.sets[1];
        assert_eq!((s.leader, s.peers(), s.mv), (2, vec![2], None));
        assert!(plan_volume(&done, &input(9000, &p, &none)).is_none(), "settled");
    }

    #[test]
    fn a_move_whose_target_goes_is_given_up_before_or_after_the_cut_over() {
        let r = volume(2, vec![SetRecord::fresh(&[(0, 10), (1, 11)])], &[0, 0, 0]);
        let mut s = r.sets[0].clone();
        start_set(&mut s, 0, (2, 12), 500).unwrap();
        let mut moving = r.clone();
        moving.sets[0] = s;
        let gone = peers(&[(0, Some(10)), (1, Some(11)), (2, None)]);
        let none = BTreeMap::new();
        // Before the cut-over: peer 2 leaves the set, peer 0 still leads.
        let (n, why) = plan_volume(&moving, &input(1000, &gone, &none)).unwrap();
        assert!(why.iter().any(|w| w.contains("given up")), "{why:?}");
        assert_eq!((n.sets[0].leader, n.sets[0].peers(), n.sets[0].mv), (0, vec![0, 1], None));
        // After it: peer 0 leads again, in sync.
        let mut cut = moving.clone();
        cut.sets[0].members[2].state = MemberState::Sync;
        let alive = peers(&[(0, Some(10)), (1, Some(11)), (2, Some(12))]);
        let (cut, _) = plan_volume(&cut, &input(1000, &alive, &none)).unwrap();
        assert_eq!(cut.sets[0].leader, 2);
        let (n, _) = plan_volume(&cut, &input(2000, &gone, &none)).unwrap();
        let s = &n.sets[0];
        assert_eq!((s.leader, state(s, 0), s.peers(), s.mv), (0, Some(MemberState::Sync), vec![0, 1], None));
        // A move of a set not all in sync is refused.
        let mut behind = r.sets[0].clone();
        behind.members[1].state = MemberState::Reconcile;
        assert!(start_set(&mut behind, 0, (2, 12), 1).unwrap_err().contains("in sync"));
    }

    #[test]
    fn a_move_is_cancelled_only_before_its_cut_over_and_listed_until_done() {
        let r = volume(1, vec![SetRecord::fresh(&[(0, 10)])], &[0, 0, 0, 0]);
        let moved = start_page(&r, 3, None, (1, 11), 42).unwrap();
        assert_eq!(
            moves(&moved),
            vec![MoveInfo { id: 42, set: 1, first_page: 3, pages: 1, from: 0, to: 1, phase: "copying" }]
        );
        let back = cancel(&moved, 42).unwrap();
        assert!(moves(&back).is_empty());
        assert_eq!(back.sets[1].peers(), vec![0], "the page's copy stays on peer 0");
        assert!(cancel(&back, 42).unwrap_err().contains("no move"));
        let mut cut = moved.clone();
        cut.sets[1].members[1].state = MemberState::Sync;
        let p = peers(&[(0, Some(10)), (1, Some(11))]);
        let (cut, _) = plan_volume(&cut, &input(100, &p, &BTreeMap::new())).unwrap();
        assert_eq!(moves(&cut)[0].phase, "cut over");
        assert!(cancel(&cut, 42).unwrap_err().contains("cut over already"));
    }
}
