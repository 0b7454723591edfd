//! Majority arithmetic (§5.2 elections, §5.3 commitment).

use crate::types::Index;

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index replicated on a majority, given each voter's match index.
pub(crate) fn committed_index(mut matched: Vec<Index>) -> Index {
    if matched.is_empty() {
        return 0;
    }
    let q = majority(matched.len());
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[q - 1]
}

pub(crate) fn vote_result(voters: usize, granted: usize, rejected: usize) -> VoteResult {
    let q = majority(voters);
    if granted >= q {
        VoteResult::Won
    } else if voters - rejected < q {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_index_is_the_majority_match() {
        assert_eq!(committed_index(vec![5]), 5);
        assert_eq!(committed_index(vec![5, 3, 1]), 3);
        assert_eq!(committed_index(vec![5, 4, 3, 2]), 3);
        assert_eq!(committed_index(vec![9, 1, 7, 2, 8]), 7);
        assert_eq!(committed_index(vec![]), 0);
    }

    #[test]
    fn votes_are_won_lost_or_pending() {
        assert_eq!(vote_result(3, 2, 0), VoteResult::Won);
        assert_eq!(vote_result(3, 1, 1), VoteResult::Pending);
        assert_eq!(vote_result(3, 1, 2), VoteResult::Lost);
        assert_eq!(vote_result(4, 2, 2), VoteResult::Lost);
        assert_eq!(vote_result(4, 2, 1), VoteResult::Pending);
        assert_eq!(vote_result(1, 1, 0), VoteResult::Won);
    }
}
