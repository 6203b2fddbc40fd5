// The bodies every load client in the tests, the stress run and the bench sends to act on a
// lease: the one place to change when a route's body changes. Release and renew name the lease
// (`lease_id`, the `id`/`lease_id` activate returned) besides the user, so a retry can never touch
// a newer lease; today's schemas ignore the extra key (zod objects strip unknown keys).

export const activateBody = (userId: string) => ({ user_id: userId });

export const releaseBody = (userId: string, leaseId: string) => ({ user_id: userId, lease_id: leaseId });

export const renewBody = (userId: string, leaseId: string) => ({ user_id: userId, lease_id: leaseId });

export const validateBody = (userId: string, fence: number) => ({ user_id: userId, fence });
